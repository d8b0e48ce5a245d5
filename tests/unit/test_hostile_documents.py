"""Documents that break the decoders themselves: nested past their recursion, or holding an
integer longer than ``int()`` converts. Every JSON and TOML reader of the project refuses them as
it refuses any other malformed input (its own one-line error, or the fallback it documents),
never with a traceback.

A few kilobytes of ``[`` are enough: both the C JSON decoder and ``tomllib`` recurse once per
level and stop at the interpreter's recursion limit with ``RecursionError``, which is neither a
``ValueError`` nor a decoding error; an integer of 4301 digits makes the JSON decoder raise a
plain ``ValueError``, not its ``JSONDecodeError``. The first test holds the whole family: no
module but ``updater.jsonout`` calls the JSON decoder itself."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest

from updater import config, jsonout, release
from updater.agent import fileseam, record
from updater.errors import DataError, UsageError, VerificationError
from updater.quiesce import checkpoint
from updater.rebootlock import fleetlock, semaphore
from updater.slotwrite.journal import Journal

PACKAGE = Path(__file__).resolve().parents[2] / "updater"
DEEP = b"[" * 4000  # within every reader's size bound (the smallest reads 4096 bytes)
DEEP_OBJECT = b'{"a":' * 4000
LONG_INTEGER = b'{"a": ' + b"9" * 4301 + b"}"


def _calls_json_decoder(tree: ast.AST) -> list[int]:
    """Lines that call ``json.loads``/``json.load`` or build a JSON decoder."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "json" and node.attr in ("loads", "load", "JSONDecoder"):
                found.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "json":
            if any(a.name in ("loads", "load", "JSONDecoder") for a in node.names):
                found.append(node.lineno)
    return found


def test_only_jsonout_decodes_json() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "jsonout.py" and path.parent == PACKAGE:
            continue
        lines = _calls_json_decoder(ast.parse(path.read_text(), str(path)))
        if lines:
            offenders[str(path.relative_to(PACKAGE))] = lines
    assert offenders == {}, "decode JSON with updater.jsonout.loads (nesting-safe)"


def test_the_guard_sees_a_direct_call() -> None:
    assert _calls_json_decoder(ast.parse("import json\njson.loads(b'1')\n")) == [2]
    assert _calls_json_decoder(ast.parse("from json import loads\n")) == [1]


@pytest.mark.parametrize(("data", "why"), [
    (DEEP, "nested too deeply"), (DEEP_OBJECT, "nested too deeply"),
    (DEEP.decode(), "nested too deeply"), (LONG_INTEGER, "integer string conversion"),
])  # fmt: skip
def test_jsonout_loads_refuses_as_malformed(data: bytes | str, why: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=why):
        jsonout.loads(data)
    assert isinstance(json.JSONDecodeError("x", "", 0), ValueError)  # what callers catch
    assert jsonout.loads(b"[" * 50 + b"]" * 50) is not None  # ordinary nesting still parses


@pytest.mark.parametrize("data", [DEEP, DEEP_OBJECT, LONG_INTEGER])
def test_state_files_refuse_them_with_one_line(data: bytes) -> None:
    with pytest.raises(DataError, match="not JSON"):
        jsonout.bounded_loads(data, 64 * 1024)
    with pytest.raises(DataError, match="^agent state: not JSON"):
        record.loads(data)
    with pytest.raises(DataError, match="^m.json: not JSON"):
        checkpoint.decode(data, "m.json")
    with pytest.raises(DataError, match="^resume journal is not JSON"):
        Journal.decode(data)
    with pytest.raises(DataError, match="^the body is not JSON"):
        fleetlock.parse_body(data)


@pytest.mark.parametrize("data", [DEEP, LONG_INTEGER])
def test_such_a_release_index_is_refused(data: bytes) -> None:
    with pytest.raises(VerificationError, match="not JSON"):
        release.parse_index(data, "stable", "amd64")


@pytest.mark.parametrize("data", [DEEP, DEEP_OBJECT])  # (it reads 4096 bytes: no long integer)
def test_such_a_letters_file_is_forgotten(tmp_path: Path, data: bytes) -> None:
    (tmp_path / fileseam.LETTERS_FILE).write_bytes(data)
    assert fileseam.load_letters(str(tmp_path)) == {}


def test_a_deep_holder_value_is_no_date() -> None:
    keys = semaphore.Keys("updater/reboot-lock", "workers")
    kv = {"key": base64.b64encode(keys.holders + b"m1").decode(),
          "value": base64.b64encode(DEEP).decode(), "lease": "7", "create_revision": "9"}
    held = semaphore.parse_holder(kv, keys)
    assert (held.id, held.since, held.lease, held.created) == ("m1", "", 7, 9)


@pytest.mark.parametrize("text", ["a = " + "[" * 4000, "a = " + "{b = " * 4000])
def test_a_deep_configuration_file_is_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="^c.toml: values nested too deeply$"):
        config.parse(text, "c.toml")

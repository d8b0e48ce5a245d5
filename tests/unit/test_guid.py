"""``updater.guid.Guid`` behaves as ``uuid.UUID`` does where the project uses it.

The oracle is the standard ``uuid`` module: the same 16 bytes give the same text and bytes in
both byte orders, and every text either both accept (with the same value) or ``uuid.UUID``
alone accepts, which happens only for the deliberate differences the module docstring lists
(what ``int(text, 16)`` takes beyond hexadecimal digits). Hypothesis draws the bytes and the
texts: canonical forms changed in case, hyphens, braces and prefixes, with characters
deleted, added or replaced by hexadecimal digits, separators and characters that ``int()``
treats specially.
"""

from __future__ import annotations

import ast
import copy
import pickle
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from updater import guid, layout
from updater.guid import NIL, Guid, name_based_guid, random_guid

sixteen = st.binary(min_size=16, max_size=16)
NOT_A_UUID = " is not a UUID (32 hexadecimal digits, hyphens optional)"
ANY_TEXT = "Guid() takes one of: a UUID's text (a str), bytes_le= or bytes="

# Pieces a text is changed with: what uuid.UUID strips or removes, what ends a UUID, what
# int(text, 16) takes beyond hexadecimal digits (white space, a sign, a 0x prefix, underscores,
# decimal digits of other scripts) and characters that are no digit anywhere.
PIECES = ["0", "7", "a", "F", "-", "--", "{", "}", "urn:", "uuid:", "urn:uuid:", ":", " ", "\t",
          "\n", "\u00a0", "\u2003", "+", "0x", "0X", "x", "_", "\u0663", "\uff11", "\U0001d7d9",
          "\u00b2", "\uff21", "g", "X", "é", "\0", "00"]  # fmt: skip
# A text uuid.UUID accepts but Guid refuses holds one of these (the module docstring's list).
EXTRAS_OF_INT = set("+_xX")


def _extra_of_int(c: str) -> bool:
    return c.isspace() or c in EXTRAS_OF_INT or not c.isascii()


@st.composite
def texts(draw: st.DrawFn) -> str:
    """A UUID's text in one of its forms, then perhaps spoiled."""
    u = uuid.UUID(bytes=draw(sixteen))
    text = draw(st.sampled_from([str(u), u.hex, u.urn, "{" + str(u) + "}", "uuid:" + u.hex]))
    chars = list(text)
    for i in draw(st.lists(st.integers(0, len(chars) - 1), max_size=6)):
        chars[i] = chars[i].upper()
    if draw(st.booleans()):  # hyphens moved: all taken out, some put anywhere
        chars = [c for c in chars if c != "-"]
        for i in draw(st.lists(st.integers(0, len(chars)), max_size=5)):
            chars.insert(i, "-")
    for _ in range(draw(st.integers(0, 2))):  # a piece deleted, added or replaced
        i = draw(st.integers(0, len(chars)))
        piece = draw(st.sampled_from(PIECES))
        how = draw(st.sampled_from(["delete", "insert", "replace"]))
        if how == "delete":
            del chars[i : i + 1]
        else:
            chars[i : i + (how == "replace")] = [piece]
    return "".join(chars)


def refusal(text: str) -> str:
    """The message: the text quoted, cut after 40 characters."""
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
    return shown + NOT_A_UUID


# --- bytes -----------------------------------------------------------------------------------


@given(sixteen)
def test_bytes_le_read_as_the_uuid_module_reads_them(raw: bytes) -> None:
    g, u = Guid(bytes_le=raw), uuid.UUID(bytes_le=raw)
    assert str(g) == str(u) and g.bytes_le == raw and g.bytes == u.bytes


@given(sixteen)
def test_bytes_read_as_the_uuid_module_reads_them(raw: bytes) -> None:
    g, u = Guid(bytes=raw), uuid.UUID(bytes=raw)
    assert str(g) == str(u) and g.bytes == raw and g.bytes_le == u.bytes_le
    assert Guid(bytes_le=g.bytes_le) == g == Guid(str(u)) == Guid(u.urn) == Guid(u.hex.upper())


def test_the_byte_orders_of_a_known_gpt_type() -> None:
    """UEFI's EFI system partition type as the specification prints it and as a GPT entry
    stores it (the first three fields little-endian)."""
    on_disk = bytes.fromhex("28732ac11ff8d211ba4b00a0c93ec93b")
    esp = Guid(bytes_le=on_disk)
    assert str(esp) == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    assert esp.bytes == bytes.fromhex("c12a7328f81f11d2ba4b00a0c93ec93b")
    assert esp == Guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")


def test_bytes_like_values_are_copied() -> None:
    raw = bytearray(range(16))
    for g in (Guid(bytes_le=raw), Guid(bytes_le=memoryview(raw))):
        raw[0] = 99  # the caller's buffer changes; the Guid does not
        assert type(g.bytes_le) is bytes and g.bytes_le == bytes(range(16))
        raw[0] = 0
    assert Guid(bytes=bytearray(range(16))).bytes == bytes(range(16))


def test_nil() -> None:
    assert str(NIL) == "00000000-0000-0000-0000-000000000000" == str(uuid.UUID(int=0))
    assert NIL == Guid(bytes=bytes(16)) and NIL.bytes_le == bytes(16)


# --- text ------------------------------------------------------------------------------------


@settings(max_examples=2000)
@given(texts())
def test_text_is_read_as_the_uuid_module_reads_it(text: str) -> None:
    try:
        expected: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        expected = None
    try:
        found: Guid | None = Guid(text)
    except ValueError as exc:
        assert str(exc) == refusal(text)
        found = None
    if found is not None:
        event("accepted")
        assert expected is not None and found.bytes == expected.bytes
        assert str(found) == str(expected)
    elif expected is not None:
        event("refused, though uuid.UUID accepts it")
        assert any(_extra_of_int(c) for c in text), text
    else:
        event("refused")


@pytest.mark.parametrize(
    "text",
    [
        "7130c94a-213a-4e5a-8e26-6cce9662f132",
        "7130C94A213A4E5A8E266CCE9662F132",
        "{7130c94a-213a-4e5a-8e26-6cce9662f132}",
        "{{7130c94a213a4e5a8e266cce9662f132}",  # braces are stripped, not matched
        "urn:uuid:7130c94a-213a-4e5a-8e26-6cce9662f132",
        "uuid:7130c94a213a4e5a8e266cce9662f132",
        "7130-c94a213a4e5a8e266cce9662f1-3-2",  # hyphens anywhere
        "7130c94a213a4e5a8e26urn:6cce9662f132",  # uuid.UUID removes urn: and uuid: anywhere
        "-7130c94a213a4e5a8e266cce9662f132-",
    ],
)
def test_forms_both_accept(text: str) -> None:
    assert Guid(text) == Guid("7130c94a-213a-4e5a-8e26-6cce9662f132")
    assert str(Guid(text)) == str(uuid.UUID(text)) == "7130c94a-213a-4e5a-8e26-6cce9662f132"


@pytest.mark.parametrize(
    "text",
    [
        " 7130c94a213a4e5a8e266cce9662f13",  # white space around the digits
        "7130c94a213a4e5a8e266cce9662f13\u2003",
        "+7130c94a213a4e5a8e266cce9662f13",  # a sign
        "0x30c94a213a4e5a8e266cce9662f132",  # a prefix
        "7130c94a_13a4e5a8e266cce9662f132",  # an underscore between digits
        "\u0667130c94a213a4e5a8e266cce9662f132",  # ARABIC-INDIC DIGIT SEVEN
        "\uff17130c94a213a4e5a8e266cce9662f132",  # FULLWIDTH DIGIT SEVEN
    ],
)
def test_what_only_int_takes_is_refused(text: str) -> None:
    """The deliberate difference: uuid.UUID reads these through int(text, 16)."""
    uuid.UUID(text)
    with pytest.raises(ValueError) as info:
        Guid(text)
    assert str(info.value) == repr(text) + NOT_A_UUID


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "''" + NOT_A_UUID),
        ("nope", "'nope'" + NOT_A_UUID),
        ("0" * 31, "'" + "0" * 31 + "'" + NOT_A_UUID),
        ("0" * 33, "'" + "0" * 33 + "'" + NOT_A_UUID),
        ("0" * 31 + "g", "'" + "0" * 31 + "g'" + NOT_A_UUID),
        # what strip("{}") would take with other characters: nothing but braces is stripped
        ("X" + "0" * 32, "'X" + "0" * 32 + "'" + NOT_A_UUID),
        ("0" * 32 + "X", "'" + "0" * 32 + "X'" + NOT_A_UUID),
        # 32 characters, but a space between byte pairs, which bytes.fromhex skips
        ("00 " + "0" * 29, "'00 " + "0" * 29 + "'" + NOT_A_UUID),
        ("0" * 30 + "\n0", "'" + "0" * 30 + "\\n0'" + NOT_A_UUID),
        ("a" * 40, "'" + "a" * 40 + "'" + NOT_A_UUID),  # 40 characters are quoted whole
        ("a" * 41, "'" + "a" * 40 + "'..." + NOT_A_UUID),  # longer texts are cut
        ("a" * 10_000, "'" + "a" * 40 + "'..." + NOT_A_UUID),
    ],
)
def test_text_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Guid(text)
    assert str(info.value) == message
    with pytest.raises(ValueError):
        uuid.UUID(text)


# --- construction errors ---------------------------------------------------------------------

RAW = bytes(range(16))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Guid(), TypeError, ANY_TEXT),
        (lambda: Guid(str(NIL), bytes_le=RAW), TypeError, ANY_TEXT),
        (lambda: Guid(str(NIL), bytes=RAW), TypeError, ANY_TEXT),
        (lambda: Guid(bytes=RAW, bytes_le=RAW), TypeError, ANY_TEXT),
        (lambda: Guid(str(NIL), bytes=RAW, bytes_le=RAW), TypeError, ANY_TEXT),
        (lambda: Guid(RAW), TypeError, ANY_TEXT),  # type: ignore[arg-type]
        (lambda: Guid(bytes_le=16), TypeError, "bytes_le must be bytes, not int"),  # type: ignore[arg-type]
        (lambda: Guid(bytes="0" * 16), TypeError, "bytes must be bytes, not str"),  # type: ignore[arg-type]
        (lambda: Guid(bytes_le=RAW[:15]), ValueError, "bytes_le must be 16 bytes, not 15"),
        (lambda: Guid(bytes=RAW + b"\0"), ValueError, "bytes must be 16 bytes, not 17"),
        (lambda: random_guid(RAW[:15]), ValueError, "a random GUID needs 16 random bytes, not 15"),
        (lambda: random_guid(RAW + b"\0"), ValueError,
         "a random GUID needs 16 random bytes, not 17"),
    ],
)  # fmt: skip
def test_construction_errors(make: object, error: type[Exception], message: str) -> None:
    assert callable(make)
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == message


# --- a value ---------------------------------------------------------------------------------


@given(sixteen, sixteen)
def test_equal_and_hashed_by_value(a: bytes, b: bytes) -> None:
    g = Guid(bytes=a)
    same = Guid(str(uuid.UUID(bytes=a)))
    assert g == same and not g != same and hash(g) == hash(same)
    assert len({g, same}) == 1 and {g: 1}[same] == 1
    assert (g == Guid(bytes=b)) == (a == b) and (g != Guid(bytes=b)) == (a != b)


def test_hashes_tell_values_apart() -> None:
    assert len({hash(Guid(bytes=bytes([i]) * 16)) for i in range(64)}) == 64


def test_equal_to_nothing_but_a_guid() -> None:
    """Not to the uuid.UUID, the text or the bytes of the same value: comparing a GUID with its
    text is a mistake, which must not pass by accident."""
    g = Guid("7130c94a-213a-4e5a-8e26-6cce9662f132")
    for other in (uuid.UUID(str(g)), str(g), g.bytes, g.bytes_le, None, 0):
        assert (g == other) is False and (other == g) is False
        assert (g != other) is True and (other != g) is True
        assert g.__eq__(other) is NotImplemented


def test_no_order() -> None:
    with pytest.raises(TypeError):
        sorted([Guid(bytes=RAW), NIL])  # type: ignore[type-var]


def test_immutable() -> None:
    g = Guid(bytes=RAW)
    for name in ("bytes", "bytes_le", "_le", "other"):
        with pytest.raises(AttributeError) as info:
            setattr(g, name, NIL.bytes)
        assert str(info.value) == f"a Guid cannot be changed (setting {name!r})"
        with pytest.raises(AttributeError) as info:
            delattr(g, name)
        assert str(info.value) == f"a Guid cannot be changed (deleting {name!r})"
    assert g.bytes == RAW and not hasattr(g, "__dict__")


def test_repr_reads_back() -> None:
    g = Guid(bytes_le=RAW)
    assert repr(g) == f"Guid('{uuid.UUID(bytes_le=RAW)}')"
    assert repr(g) == "Guid('03020100-0504-0706-0809-0a0b0c0d0e0f')"
    assert eval(repr(g), {"Guid": Guid}) == g


def test_copies_and_pickles_are_equal() -> None:
    g = Guid(bytes=RAW)
    assert g.__reduce__() == (Guid, (str(g),))
    assert copy.copy(g) == g and copy.deepcopy(g) == g
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(g, protocol)) == g


# --- new GUIDs -------------------------------------------------------------------------------


@given(sixteen)
def test_a_random_guid_is_uuid4_of_the_same_bytes(raw: bytes) -> None:
    made = random_guid(raw)
    expected = uuid.UUID(bytes=raw, version=4)  # what uuid.uuid4 makes of os.urandom(16)
    assert made.bytes == expected.bytes
    assert (expected.version, expected.variant) == (4, uuid.RFC_4122)


@given(sixteen, st.text(max_size=40))
def test_a_name_based_guid_is_uuid5(namespace: bytes, name: str) -> None:
    expected = uuid.uuid5(uuid.UUID(bytes=namespace), name)
    assert name_based_guid(Guid(bytes=namespace), name).bytes == expected.bytes


def test_a_known_name_based_guid() -> None:
    """The example of Python's uuid documentation: uuid5(NAMESPACE_DNS, 'python.org')."""
    dns = Guid("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    assert str(name_based_guid(dns, "python.org")) == "886313e1-3b8a-5372-9b90-0c9aee199e5d"


def test_the_layouts_derived_guids_are_unchanged() -> None:
    """Images are cached by content hash: the GUIDs derived from labels are what uuid.uuid5
    made of the project's namespace before."""
    namespace = uuid.UUID("4f1b4a6e-9d0e-4c6b-8a4f-2f4b1f0c7a51")
    flatcar = layout.flatcar_layout()
    for p in flatcar.partitions:
        if not p.label.startswith("USR-"):
            assert str(p.partuuid) == str(uuid.uuid5(namespace, p.label))
    assert str(flatcar.disk_guid) == str(uuid.uuid5(namespace, "disk"))


# --- start-up cost ---------------------------------------------------------------------------


def imported(nodes: Iterable[ast.AST]) -> set[str]:
    """The top-level packages the import statements among ``nodes`` name."""
    found = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            found |= {alias.name.split(".")[0] for alias in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            found.add(n.module.split(".")[0])
    return found


def test_imports_nothing_heavy() -> None:
    """Not uuid (with platform), re or typing, and hashlib only where a name-based GUID is
    made, never at module level."""
    tree = ast.parse(Path(guid.__file__).read_text())
    anywhere = imported(ast.walk(tree))
    assert not anywhere & {"uuid", "platform", "re", "typing", "dataclasses"}
    assert "hashlib" in anywhere and "hashlib" not in imported(tree.body)

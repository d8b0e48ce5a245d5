"""The parsed-configuration cache: the next command reads the default file's document from it
instead of importing the TOML parser, only for the very same text, and anything wrong with the
cache (shape, owner, mode, size, link, nesting) only means parsing the file again. The oracle for
what a document must be is ``tomllib`` itself."""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from pathlib import Path

import pytest

from updater import config
from updater.errors import UsageError

TEXT = "[update]\nchannel = 'beta'\n\n[boot]\nextra_args = ['quiet']\n"


@pytest.fixture
def default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "updater.toml"
    monkeypatch.setattr(config, "CONFIG_PATH", str(path))
    monkeypatch.setattr(config, "LEGACY_BOOT_CONF", str(tmp_path / "boot.conf"))
    monkeypatch.setattr(config, "_LOADED", {})
    return path


def next_command(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Forget what this process read, as a new command would, and count TOML parses."""
    config._LOADED.clear()
    parsed: list[str] = []
    real = config._toml

    def counting(text: str, source: str) -> dict[str, object]:
        parsed.append(text)
        return real(text, source)

    monkeypatch.setattr(config, "_toml", counting)
    return parsed


def typed(value: object) -> object:
    """``value`` with every leaf tagged by its type: 1 and 1.0 and True must stay apart."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


def test_the_next_command_takes_the_document_without_parsing(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default.write_text(TEXT)
    first = config.load()
    assert first == config.parse(TEXT, str(default))
    assert Path(config.CACHE_PATH).is_file()
    parsed = next_command(monkeypatch)
    assert config.load() == first
    assert parsed == []


def test_another_text_is_parsed_and_remembered_anew(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default.write_text(TEXT)
    config.load()
    default.write_text(TEXT.replace("beta", "gama"))  # same length, same file
    parsed = next_command(monkeypatch)
    assert config.load().update.channel == "gama" and len(parsed) == 1
    parsed = next_command(monkeypatch)
    assert config.load().update.channel == "gama" and parsed == []


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        "[update]\nchannel = 'b\\u00e9ta \\\\ \"q\"'\n",
        "[boot]\nextra_args = ['a=1', 'b=\\u2603', '']\n",
        "[agent]\ninterval = 1e300\n[lock]\nmax = 9223372036854775807\n",
        "[agent]\ninterval = -0.0\n[x]\ny = [[1, 2.0], [true, 'z'], {a = {b = []}}]\n",
    ],
)
def test_a_cached_document_is_exactly_what_the_parser_gives(
    default: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    default.write_text(text)
    with contextlib.suppress(UsageError):  # the cache holds what was parsed, valid or not
        config.load()
    cached = json.loads(Path(config.CACHE_PATH).read_text())
    assert typed(cached["document"]) == typed(tomllib.loads(text))
    assert cached["text"] == text


def test_what_json_cannot_hold_exactly_is_parsed_every_time(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text in ("[update]\nchannel = 1979-05-27\n", "[agent]\ninterval = inf\n"):
        default.write_text(text)
        with pytest.raises(UsageError):
            config.load()
        assert not Path(config.CACHE_PATH).exists()


def test_a_cache_that_validates_badly_still_fails_validation(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache replaces the parser, never the validation."""
    default.write_text(TEXT)
    doc = {"format": config.CACHE_FORMAT, "source": str(default), "text": TEXT,
           "document": {"update": {"channel": "Not A Channel"}}}  # fmt: skip
    Path(config.CACHE_PATH).write_text(json.dumps(doc))
    next_command(monkeypatch)
    with pytest.raises(UsageError, match=r"\[update\] channel"):
        config.load()


def hostile_caches(default: Path) -> dict[str, bytes]:
    good = {"format": config.CACHE_FORMAT, "source": str(default), "text": TEXT,
            "document": {"update": {"channel": "evil"}}}  # fmt: skip

    def variant(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    return {
        "not json": b"{",
        "nested": b"[" * 100_000,
        "a list": b"[]",
        "other format": variant(format="updater-config-cache-0"),
        "other file": variant(source="/etc/other.toml"),
        "other text": variant(text=TEXT + "\n"),
        "document not a table": variant(document=["update"]),
        "an extra key": variant(extra=1),
        "too large": variant(text=TEXT, padding="x" * config.MAX_CACHE_BYTES),
        "not utf-8": b"\xff" + variant(),
    }


def test_a_hostile_cache_only_means_parsing_again(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default.write_text(TEXT)
    cache = Path(config.CACHE_PATH)
    for name, data in hostile_caches(default).items():
        cache.write_bytes(data)
        parsed = next_command(monkeypatch)
        assert config.load().update.channel == "beta", name
        assert len(parsed) == 1, name


def test_a_cache_others_could_write_or_a_link_is_ignored(
    default: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default.write_text(TEXT)
    cache = Path(config.CACHE_PATH)
    poisoned = json.dumps({"format": config.CACHE_FORMAT, "source": str(default), "text": TEXT,
                           "document": {"update": {"channel": "evil"}}})  # fmt: skip
    # As it would be taken: the shape is right, only where it lies is wrong.
    cache.write_text(poisoned)
    next_command(monkeypatch)
    assert config.load().update.channel == "evil"
    for mode in (0o664, 0o646):
        cache.write_text(poisoned)
        cache.chmod(mode)
        parsed = next_command(monkeypatch)
        assert config.load().update.channel == "beta" and len(parsed) == 1, oct(mode)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(poisoned)
    cache.unlink()
    cache.symlink_to(elsewhere)
    parsed = next_command(monkeypatch)
    assert config.load().update.channel == "beta" and len(parsed) == 1
    if os.geteuid() == 0:  # another owner: only root can make one
        cache.unlink()
        cache.write_text(poisoned)
        os.chown(cache, 65534, 65534)
        parsed = next_command(monkeypatch)
        assert config.load().update.channel == "beta" and len(parsed) == 1


def test_an_explicit_file_is_never_cached(
    default: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(TEXT)
    assert config.load(str(other)).update.channel == "beta"
    assert not Path(config.CACHE_PATH).exists()


def test_an_unwritable_cache_place_changes_nothing(
    default: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(config, "CACHE_PATH", str(tmp_path / "file" / "config.json"))
    default.write_text(TEXT)
    assert config.load().update.channel == "beta"


def test_a_cache_of_exactly_the_bound_is_read_one_more_byte_is_not(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default.write_text(TEXT)
    good = json.dumps({"format": config.CACHE_FORMAT, "source": str(default), "text": TEXT,
                       "document": {"update": {"channel": "evil"}}}).encode()  # fmt: skip
    cache = Path(config.CACHE_PATH)
    cache.write_bytes(good + b" " * (config.MAX_CACHE_BYTES - len(good)))  # JSON may end in spaces
    next_command(monkeypatch)
    assert config.load().update.channel == "evil"
    cache.write_bytes(good + b" " * (config.MAX_CACHE_BYTES + 1 - len(good)))
    next_command(monkeypatch)
    assert config.load().update.channel == "beta"


def test_a_cache_of_root_is_taken_by_another_reader_and_execute_bits_do_not_matter(
    default: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default.write_text(TEXT)
    cache = Path(config.CACHE_PATH)
    doc = {"format": config.CACHE_FORMAT, "source": str(default), "text": TEXT,
           "document": {"update": {"channel": "evil"}}}  # fmt: skip
    cache.write_text(json.dumps(doc))
    cache.chmod(0o645)
    owner = cache.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1000)
    next_command(monkeypatch)
    assert config.load().update.channel == ("evil" if owner == 0 else "beta")


def test_the_cache_and_its_directory_are_made_readable_by_all_writable_by_root(
    default: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config, "CACHE_PATH", str(tmp_path / "run" / "updater" / "config.json"))
    default.write_text(TEXT)
    old = os.umask(0)  # the modes asked for, not what a umask leaves of the defaults
    try:
        config.load()
    finally:
        os.umask(old)
    assert (tmp_path / "run" / "updater").stat().st_mode & 0o777 == 0o755
    assert Path(config.CACHE_PATH).stat().st_mode & 0o777 == 0o644


def test_an_explicit_file_never_takes_a_cache_either(
    default: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(TEXT)
    Path(config.CACHE_PATH).write_text(json.dumps({
        "format": config.CACHE_FORMAT, "source": str(other), "text": TEXT,
        "document": {"update": {"channel": "evil"}}}))  # fmt: skip
    assert config.load(str(other)).update.channel == "beta"


def test_problems_of_the_default_file_name_it(default: Path) -> None:
    default.write_text("[update\n")
    with pytest.raises(UsageError, match=rf"^{default}: "):
        config.load()
    default.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UsageError) as info:
        config.load()
    assert info.value.message == f"{default}: values nested too deeply"


def test_a_huge_cache_is_not_read_whole(default: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    default.write_text(TEXT)
    with Path(config.CACHE_PATH).open("wb") as f:
        f.truncate(256 << 20)  # sparse: 256 MiB of zeros that reading whole would allocate
    next_command(monkeypatch)
    tracemalloc.start()
    try:
        assert config.load().update.channel == "beta"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * config.MAX_CACHE_BYTES

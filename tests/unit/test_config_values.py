"""Every setting's value rules through the file parser: the limits each accepts, and the exact
line each refusal prints (``FILE: [section] key ...``), written out from the README's reference
rather than derived from the settings table."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import pytest

from updater import config
from updater.agent.schedule import Window
from updater.cmdline import Delivery
from updater.config import LockBackend, RebootStrategy, RebootVia, SlotBackend
from updater.errors import UsageError


def value_of(section: str, key: str, toml: str) -> Any:
    cfg = config.parse(f"[{section}]\n{key} = {toml}\n", "f.toml")
    assert cfg.source == "f.toml"
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize(
    ("section", "key", "toml", "expected"),
    [
        ("boot", "extra_args", '"a  b=\\"c d\\""', ("a", 'b="c d"')),
        ("boot", "extra_args", '["x=1", "y"]', ("x=1", "y")),
        ("boot", "extra_args", "[]", ()),
        ("boot", "reuse_cmdline", "true", True),
        ("boot", "drop_args", '"quiet"', ("quiet",)),
        ("boot", "drop_args", '["root=x"]', ("root=x",)),  # dropping may name anything
        ("boot", "delivery", '"initrd"', Delivery.INITRD),
        ("boot", "verity", "false", False),
        ("boot", "arch", '"amd64"', "x86_64"),
        ("boot", "arch", '"aarch64"', "arm64"),
        ("boot", "arch", '"arm64"', "arm64"),
        ("boot", "panic", "-1", -1),
        ("boot", "panic", "3600", 3600),
        ("boot", "backend", '"files"', SlotBackend.FILES),
        ("boot", "backend", '"gpt"', SlotBackend.GPT),
        ("boot", "images_dir", '"/var/lib/os-images"', "/var/lib/os-images"),
        ("boot", "images_dir", '"/srv/X"', "/srv/X"),
        ("boot", "images_dir", '"/srv/X/"', "/srv/X"),  # the trailing slash dropped
        ("boot", "images_dir", '"/' + "d" * 127 + '"', "/" + "d" * 127),  # 128 characters
        ("boot", "tries", "1", 1),
        ("boot", "tries", "9", 9),
        ("update", "repo", '"https://h.example/p/"', "https://h.example/p"),
        ("update", "repo", '"http://h:8080"', "http://h:8080"),
        ("update", "repo", '""', ""),
        ("update", "repo", '"/media/usb/repo"', "/media/usb/repo"),
        ("update", "trusted_root", '"/x"', "/x"),
        ("update", "state_dir", '"/var/lib/u"', "/var/lib/u"),
        ("update", "channel", '"a"', "a"),
        ("update", "channel", '"0' + "a" * 63 + '"', "0" + "a" * 63),
        ("update", "channel", '"beta-2.x_y"', "beta-2.x_y"),
        ("update", "reboot", '"kexec"', RebootVia.KEXEC),
        ("update", "timeout", "1", 1.0),
        ("update", "timeout", "3600", 3600.0),
        ("update", "retries", "0", 0),
        ("update", "retries", "20", 20),
        ("agent", "interval", "1", 1.0),
        ("agent", "interval", "604800", 604800.0),
        ("agent", "jitter", "0", 0.0),
        ("agent", "jitter", "0.5", 0.5),
        ("agent", "channel", '""', ""),
        ("agent", "version", '"1.2.3"', "1.2.3"),
        ("agent", "reboot", '"off"', RebootStrategy.OFF),
        ("agent", "windows", "[]", ()),
        ("agent", "windows", '[{days = ["Sun"], start = "01:02", minutes = 3}]',
         (Window((6,), time(1, 2), 3),)),
        ("agent", "timezone", '"Europe/Berlin"', "Europe/Berlin"),
        ("agent", "timezone", '"Etc/GMT+1"', "Etc/GMT+1"),
        ("agent", "timezone", '"' + "Z" * 64 + '"', "Z" * 64),
        ("agent", "machine_id_file", '"/m"', "/m"),
        ("agent", "metrics_file", '""', ""),
        ("agent", "metrics_file", '"/m.prom"', "/m.prom"),
        ("agent", "reboot_required_file", '"/r"', "/r"),
        ("lock", "backend", '"fleetlock"', LockBackend.FLEETLOCK),
        ("lock", "endpoints", '"http://e:2379/"', ("http://e:2379",)),
        ("lock", "endpoints", str([f"http://e{i}" for i in range(16)]).replace("'", '"'),
         tuple(f"http://e{i}" for i in range(16))),
        ("lock", "group", '"A.b-' + "c" * 60 + '"', "A.b-" + "c" * 60),
        ("lock", "id", '""', ""),
        ("lock", "id", '"' + "a" * 128 + '"', "a" * 128),
        ("lock", "id", '"a.b_c:d@e-f"', "a.b_c:d@e-f"),
        ("lock", "ttl", "2", 2.0),
        ("lock", "ttl", "86400", 86400.0),
        ("lock", "retry", "0.1", 0.1),
        ("lock", "prefix", '"a/b.c/d_e-f"', "a/b.c/d_e-f"),
        ("lock", "prefix", '"' + "p" * 128 + '"', "p" * 128),
        ("lock", "timeout", "0.5", 0.5),
        ("lock", "timeout", "300", 300.0),
        ("health", "commands", "[\"a 'b c'\", [\"x\", \"y z\"]]", (("a", "b c"), ("x", "y z"))),
        ("health", "units", '["a.service", "b@c.mount", "x\\\\x2d.slice"]',
         ("a.service", "b@c.mount", "x\\x2d.slice")),
        ("health", "timeout", "3600", 3600.0),
        ("health", "deadline", "86400", 86400.0),
        ("health", "interval", "0.1", 0.1),
        ("health", "interval", "600", 600.0),
        ("checkpoint", "pidfiles", "[]", ()),
        ("checkpoint", "pidfiles", '["/run/a.pid", "/b"]', ("/run/a.pid", "/b")),
        ("checkpoint", "pidfiles", str([f"/p{i}" for i in range(64)]).replace("'", '"'),
         tuple(f"/p{i}" for i in range(64))),
    ],
)  # fmt: skip
def test_accepted_values(section: str, key: str, toml: str, expected: object) -> None:
    got = value_of(section, key, toml)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("section", "key", "toml", "message"),
    [
        ("boot", "extra_args", "5", "must be a string or a list of strings"),
        ("boot", "extra_args", '["a", 5]', "must be a string or a list of strings"),
        ("boot", "extra_args", '["a b"]', "'a b' is not exactly one kernel argument"),
        ("boot", "extra_args", '"a\\u0001"', "'a\\x01' holds control characters"),
        ("boot", "extra_args", '"Root=x"', "'Root=x' would set a slot-specific or protected "
         "argument, which the updater sets itself"),
        ("boot", "reuse_cmdline", "1", "must be true or false, not 1"),
        ("boot", "delivery", '"usb"', "must be one of cmdline, initrd, not 'usb'"),
        ("boot", "delivery", "1", "must be one of cmdline, initrd, not 1"),
        ("boot", "arch", '"mips"', "must be one of x86_64, arm64, not 'mips'"),
        ("boot", "panic", "-2", "must be a whole number from -1 to 3600, not -2"),
        ("boot", "panic", "3601", "must be a whole number from -1 to 3600, not 3601"),
        ("boot", "panic", "true", "must be a whole number from -1 to 3600, not True"),
        ("boot", "panic", "1.0", "must be a whole number from -1 to 3600, not 1.0"),
        ("boot", "backend", '"zfs"', "must be one of gpt, files, not 'zfs'"),
        *[("boot", "images_dir", f'"{bad}"', "must be an absolute directory of A-Z a-z 0-9 . _ "
           f"- /, not {bad!r}") for bad in ("images", "/a b", "/", "/srv//x", "/srv/x//",
                                             "/a/../etc", "/" + "d" * 128)],  # 129 characters
        ("boot", "tries", "0", "must be a whole number from 1 to 9, not 0"),
        ("boot", "tries", "10", "must be a whole number from 1 to 9, not 10"),
        ("update", "repo", '"ftp://h/p"', "must be an http:// or https:// URL or an absolute "
         "directory, not 'ftp://h/p'"),
        ("update", "repo", '"https:///p"', "must be an http:// or https:// URL or an absolute "
         "directory, not 'https:///p'"),
        ("update", "repo", '"/a\\u0007"', "must be an http:// or https:// URL or an absolute "
         "directory, not '/a\\x07'"),
        ("update", "trusted_root", '"rel/x"', "must be an absolute path, not 'rel/x'"),
        ("update", "trusted_root", '"/a\\nb"', "must be an absolute path, not '/a\\nb'"),
        ("update", "trusted_root", "1", "must be an absolute path, not 1"),
        ("update", "channel", '"-x"', "must be 1-64 of a-z 0-9 . _ - starting with a letter or "
         "digit: '-x'"),
        ("update", "channel", '"' + "a" * 65 + '"', "must be 1-64 of a-z 0-9 . _ - starting with "
         f"a letter or digit: '{'a' * 65}'"),
        ("update", "channel", '"Beta"', "must be 1-64 of a-z 0-9 . _ - starting with a letter "
         "or digit: 'Beta'"),
        ("update", "timeout", "0.5", "must be a number of seconds from 1 to 3600, not 0.5"),
        ("update", "timeout", "3601", "must be a number of seconds from 1 to 3600, not 3601"),
        ("update", "timeout", "false", "must be a number of seconds from 1 to 3600, not False"),
        ("update", "retries", "21", "must be a whole number from 0 to 20, not 21"),
        ("agent", "interval", "604801", "must be a number of seconds from 1 to 604800, not "
         "604801"),
        ("agent", "jitter", "0.51", "must be a number from 0 to 0.5, not 0.51"),
        ("agent", "jitter", "-0.1", "must be a number from 0 to 0.5, not -0.1"),
        ("agent", "jitter", "true", "must be a number from 0 to 0.5, not True"),
        ("agent", "version", '"V1"', "must be 1-64 of a-z 0-9 . _ - starting with a letter or "
         "digit: 'V1'"),
        ("agent", "reboot", '"none"', "must be one of kexec, firmware, off, not 'none'"),
        ("agent", "windows", "{}", "must be a list of at most 64 windows"),
        ("agent", "windows", "[" + ", ".join(['{days = ["Sun"], start = "01:00", minutes = 1}']
                                             * 65) + "]",
         "must be a list of at most 64 windows"),
        ("agent", "timezone", '"../etc/passwd"', "must be localtime or a time zone name such as "
         "Europe/Berlin, not '../etc/passwd'"),
        ("agent", "timezone", '"a/../b"', "must be localtime or a time zone name such as "
         "Europe/Berlin, not 'a/../b'"),
        ("agent", "timezone", '"' + "Z" * 65 + '"', "must be localtime or a time zone name such "
         f"as Europe/Berlin, not '{'Z' * 65}'"),
        ("agent", "timezone", '"Europe/"', "must be localtime or a time zone name such as "
         "Europe/Berlin, not 'Europe/'"),
        ("agent", "metrics_file", '"m.prom"', "must be an absolute path, not 'm.prom'"),
        ("lock", "endpoints", "5", "must be a URL or a list of at most 16 URLs"),
        ("lock", "endpoints", str([f"http://e{i}" for i in range(17)]).replace("'", '"'),
         "must be a URL or a list of at most 16 URLs"),
        ("lock", "endpoints", '["http://a", "etcd:2379"]', "'etcd:2379' is not an http:// or "
         "https:// URL"),
        ("lock", "group", '"a_b"', "must be 1-64 of a-z A-Z 0-9 . - (FleetLock's rule), not "
         "'a_b'"),
        ("lock", "group", '""', "must be 1-64 of a-z A-Z 0-9 . - (FleetLock's rule), not ''"),
        ("lock", "group", '"' + "g" * 65 + '"', "must be 1-64 of a-z A-Z 0-9 . - (FleetLock's "
         f"rule), not '{'g' * 65}'"),
        ("lock", "id", '"a b"', "must be 1-128 of A-Z a-z 0-9 . _ : @ -, not 'a b'"),
        ("lock", "id", '"' + "a" * 129 + '"', "must be 1-128 of A-Z a-z 0-9 . _ : @ -, not "
         f"'{'a' * 129}'"),
        ("lock", "id", "5", "must be 1-128 of A-Z a-z 0-9 . _ : @ -, not 5"),
        ("lock", "ttl", "1.5", "must be a number of seconds from 2 to 86400, not 1.5"),
        ("lock", "retry", "0.05", "must be a number of seconds from 0.1 to 3600, not 0.05"),
        ("lock", "prefix", '"/a"', "must be key words joined by /, such as updater/reboot-lock, "
         "not '/a'"),
        ("lock", "prefix", '"a//b"', "must be key words joined by /, such as "
         "updater/reboot-lock, not 'a//b'"),
        ("lock", "prefix", '"' + "p" * 129 + '"', "must be key words joined by /, such as "
         f"updater/reboot-lock, not '{'p' * 129}'"),
        ("lock", "timeout", "0.4", "must be a number of seconds from 0.5 to 300, not 0.4"),
        ("health", "commands", '"true"', "must be a list of at most 64 commands"),
        ("health", "commands", str(["true"] * 65).replace("'", '"'),
         "must be a list of at most 64 commands"),
        ("health", "commands", "[5]", "5 is not a command string or a list of arguments"),
        ("health", "commands", '[["a", 5]]', "['a', 5] is not a command string or a list of "
         "arguments"),
        ("health", "commands", '[""]', "'' is empty or holds control characters"),
        ("health", "commands", "[[]]", "[] is empty or holds control characters"),
        ("health", "commands", '[["a\\u0001"]]', "['a\\x01'] is empty or holds control "
         "characters"),
        ("health", "commands", '["a \'b"]', "\"a 'b\": No closing quotation"),
        ("health", "units", '"a.service"', "must be a list of at most 64 unit names"),
        ("health", "units", str(["a.service"] * 65).replace("'", '"'),
         "must be a list of at most 64 unit names"),
        ("health", "units", '["sshd"]', "'sshd' is not a unit name such as sshd.service"),
        ("health", "units", '["a b.service"]', "'a b.service' is not a unit name such as "
         "sshd.service"),
        ("health", "units", '[5]', "5 is not a unit name such as sshd.service"),
        ("checkpoint", "pidfiles", '"/run/a.pid"', "must be a list of at most 64 absolute paths"),
        ("checkpoint", "pidfiles", str([f"/p{i}" for i in range(65)]).replace("'", '"'),
         "must be a list of at most 64 absolute paths"),
        ("checkpoint", "pidfiles", '["/a", "rel"]', "must be an absolute path, not 'rel'"),
        ("checkpoint", "pidfiles", "[5]", "must be an absolute path, not 5"),
        ("health", "deadline", "0", "must be a number of seconds from 1 to 86400, not 0"),
        ("health", "interval", "601", "must be a number of seconds from 0.1 to 600, not 601"),
    ],
)  # fmt: skip
def test_refused_values(section: str, key: str, toml: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        config.parse(f"[{section}]\n{key} = {toml}\n", "f.toml")
    assert info.value.message == f"f.toml: [{section}] {key} {message}"
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nope]\n", "f.toml: unknown section [nope] "
                      "(known: boot, update, agent, lock, health, install, hooks, quiesce, "
                      "checkpoint)"),
        ("boot = 1\n", "f.toml: boot must be a [section]"),
        ("[lock]\nname = 1\n", "f.toml: unknown setting [lock] name (known: backend, endpoints, "
         "group, id, ttl, retry, prefix, timeout)"),
    ],
)  # fmt: skip
def test_file_structure_refusals(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        config.parse(text, "f.toml")
    assert info.value.message == message


def test_not_toml() -> None:
    with pytest.raises(UsageError, match=r"^f\.toml: .*line 1"):
        config.parse("[boot\n", "f.toml")


def test_size_and_encoding_limits() -> None:
    assert config.decode(b"#" * config.MAX_CONFIG_BYTES, "f") == "#" * (256 * 1024)
    with pytest.raises(UsageError) as info:
        config.decode(b"#" * (256 * 1024 + 1), "f")
    assert info.value.message == f"f: more than {256 * 1024} bytes"


def test_command_line_options_take_what_the_file_takes() -> None:
    import argparse

    assert config.option("update", "channel")("beta") == "beta"
    assert config.option("boot", "arch")("amd64") == "x86_64"
    with pytest.raises(argparse.ArgumentTypeError) as info:
        config.option("update", "channel")("Beta")
    assert str(info.value) == (
        "must be 1-64 of a-z 0-9 . _ - starting with a letter or digit: 'Beta'"
    )


def test_load_reads_the_default_path_and_names_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "CONFIG_PATH", str(tmp_path / "updater.toml"))
    monkeypatch.setattr(config, "LEGACY_BOOT_CONF", str(tmp_path / "boot.conf"))
    (tmp_path / "updater.toml").write_text("[update]\nchannel = 'beta'\n")
    cfg = config.load()
    assert cfg.update.channel == "beta" and cfg.source == str(tmp_path / "updater.toml")
    (tmp_path / "updater.toml").write_bytes(b"\xff")
    with pytest.raises(UsageError) as info:
        config.load()
    assert info.value.message == f"{tmp_path / 'updater.toml'}: not UTF-8 text (byte 0)"
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(UsageError) as info:
        config.load(str(tmp_path / "dir.toml"))
    assert info.value.message == f"{tmp_path / 'dir.toml'}: cannot read: Is a directory"
    with pytest.raises(UsageError) as info:
        config.load(str(tmp_path / "none.toml"))
    assert info.value.message == f"{tmp_path / 'none.toml'}: no such configuration file"
    (tmp_path / "boot.conf").write_text("")
    with pytest.raises(UsageError) as info:
        config.load()
    assert info.value.message == f"{tmp_path / 'boot.conf'} is no longer read"
    assert info.value.hint == (
        f"move its settings to the [boot] section of {tmp_path / 'updater.toml'} "
        "(see updater config --help)"
    )


def test_show_and_as_dict() -> None:
    w = Window((0, 5), time(2, 0), 90)
    assert config.show(True) == "true" and config.show(False) == "false"
    assert config.show(("a", 'b"c\\d')) == '["a", "b\\"c\\\\d"]'
    assert config.show(w) == '{days = ["Mon", "Sat"], start = "02:00", minutes = 90}'
    assert config.show(30.0) == "30" and config.show(0.1) == "0.1" and config.show(7) == "7"
    assert config.show((("a", "b"),)) == '[["a", "b"]]'
    cfg = config.with_overrides(config.Config(), "agent", windows=(w,), jitter=0.2)
    shown = config.as_dict(cfg)
    assert shown["agent"]["windows"] == [{"days": ["Mon", "Sat"], "start": "02:00",
                                          "minutes": 90}]  # fmt: skip
    assert shown["agent"]["jitter"] == 0.2 and shown["health"]["commands"] == []
    assert list(shown) == ["boot", "update", "agent", "lock", "health", "install", "hooks",
                            "quiesce", "checkpoint"]
    assert shown["lock"]["backend"] == "none" and shown["update"]["timeout"] == 30.0


# --- the checks themselves: their limits, texts and the table they sit in ------------------------


def _check(section: str, key: str) -> object:
    return config._BY_KEY[(section, key)].parse


@pytest.mark.parametrize(
    ("section", "key", "good", "bad", "message"),
    [
        ("update", "timeout", [1, 3600, 2.5], [0.5, 3601, True, "5"],
         "must be a number of seconds from 1 to 3600, not {!r}"),
        ("update", "retries", [0, 20], [-1, 21, True, 1.0],
         "must be a whole number from 0 to 20, not {!r}"),
        ("update", "reboot", ["kexec", "firmware", "none"], ["KEXEC", 1, "x"],
         "must be one of kexec, firmware, none, not {!r}"),
    ],
)  # fmt: skip
def test_value_checks_at_and_past_their_limits(
    section: str, key: str, good: list[object], bad: list[object], message: str
) -> None:
    check = config._BY_KEY[(section, key)].parse
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(ValueError) as info:
            check(value)
        assert str(info.value) == message.format(value)


@pytest.mark.parametrize(("key", "item"), [
    ("windows", {"days": ["Mon"], "start": "01:00", "minutes": 30}),
    ("commands", "true"),
    ("units", "sshd.service"),
])  # fmt: skip
def test_lists_of_64_are_allowed(key: str, item: object) -> None:
    section = "agent" if key == "windows" else "health"
    assert len(config._BY_KEY[(section, key)].parse([item] * 64)) == 64


def test_urls_lose_only_their_trailing_slashes() -> None:
    check = config._BY_KEY[("lock", "endpoints")].parse
    assert check(["https://etcd.example/pathX/"]) == ("https://etcd.example/pathX",)
    assert config._BY_KEY[("update", "repo")].parse("https://u.example/repoX/") == (
        "https://u.example/repoX"
    )


def test_every_default_is_the_sections_own() -> None:
    for s in config.SETTINGS:
        assert s.default() == getattr(config.SECTIONS[s.section](), s.key), s.key


def test_the_settings_table_matches_the_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    config._check_table()  # the table as shipped
    table = dict(config._BY_KEY)
    table[("boot", "no-such-key")] = table.pop(("boot", "panic"))
    monkeypatch.setattr(config, "_BY_KEY", table)
    with pytest.raises(AssertionError) as info:
        config._check_table()
    text = str(info.value)
    assert text.startswith("settings table and sections differ: {")
    assert "('boot', 'no-such-key')" in text and "('boot', 'panic')" in text
    assert "('update', 'timeout')" not in text


def test_a_file_is_validated_once_per_process_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "updater.toml"
    path.write_text("[update]\nchannel = 'beta'\n")
    validated: list[object] = []
    real = config.from_document

    def counting(document: dict[str, object], source: str) -> config.Config:
        validated.append(document)
        return real(document, source)

    monkeypatch.setattr(config, "from_document", counting)
    first = config.load(str(path))
    assert config.load(str(path)) is first and len(validated) == 1
    # Rewritten in place with a value of the same length: same file, same size; the new
    # value is what the next load returns.
    path.write_text("[update]\nchannel = 'gamm'\n")
    assert config.load(str(path)).update.channel == "gamm" and len(validated) == 2


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:
        f.truncate(1 << 40)  # a terabyte, sparse: reading it whole would never end
    with pytest.raises(UsageError) as info:
        config.load(str(path))
    assert info.value.message == f"{path}: more than {256 * 1024} bytes"

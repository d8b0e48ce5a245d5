"""The command line's contracts on image files (no tool runs: the ESP is a directory): one line
per error whatever the bytes on disk hold, a grubenv failure after the GPT write that says so,
and the grubenv's root hashes read for the configured architecture."""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater import bootfs, cli, gptformat, grubenv, slots
from updater.espenv import COPIES

from .memdisk import MemDisk, image_file, kernel_with_hash

GOOD = slots.encode(0, priority=1, tries=0, successful=True)
HASH_B = "0123456789abcdef" * 4


def _reader(path: Path) -> MemDisk:
    return MemDisk(bytearray(path.read_bytes()), 512)


def esp(tmp: Path, **files: bytes) -> Path:
    root = tmp / "esp"
    (root / "flatcar").mkdir(parents=True)
    for name, data in files.items():
        (root / "flatcar" / name.replace("_", "-")).write_bytes(data)
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def relabel(image: Path, partition: int, label: str) -> None:
    """Give a partition a new name in both copies, with valid CRCs (what any tool could write)."""
    data = bytearray(image.read_bytes())
    ss, total = 512, len(data) // 512
    for header_lba in (1, total - 1):
        h = bytearray(data[header_lba * ss : header_lba * ss + ss])
        fields = list(gptformat.HEADER_FORMAT.unpack_from(h))
        entries_lba, count, size = fields[10], fields[11], fields[12]
        start = entries_lba * ss + (partition - 1) * size + gptformat.ENTRY_NAME_OFFSET
        data[start : start + 72] = label.encode("utf-16-le").ljust(72, b"\0")
        fields[13] = zlib.crc32(bytes(data[entries_lba * ss : entries_lba * ss + count * size]))
        fields[3] = 0
        gptformat.HEADER_FORMAT.pack_into(h, 0, *fields)
        struct.pack_into("<I", h, 16, zlib.crc32(bytes(h[:92])))
        data[header_lba * ss : header_lba * ss + ss] = h
    image.write_bytes(bytes(data))


@given(st.text())
def test_one_line_escapes_every_control_character(text: str) -> None:
    line = cli.one_line(text)
    assert line.isprintable() and "\n" not in line and "\r" not in line
    assert cli.one_line(line) == line


def test_label_with_a_newline_still_gives_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = image_file(tmp_path / "disk.img", GOOD)
    relabel(image, 4, "USR-B\nupdater: error: forged")
    args = ["--disk", str(image), "--esp", str(esp(tmp_path)), "--booted", "A"]
    code, _, err = run([*args, "set-active", "C"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no slot named 'C'" in err
    code, _, err = run([*args, "prioritize", "4"], capsys)
    assert code == 0


def test_non_utf8_configuration_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "updater.toml"
    conf.write_bytes(b"[boot]\ndelivery = \"\xff\xfe\"\n")
    code, _, err = run(["--config", str(conf), "config", "show"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize(("arch", "offset"), [("x86_64", 0x40), ("arm64", 512), ("aarch64", 512)])
def test_grubenv_hashes_follow_the_configured_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, offset: int
) -> None:
    """Flatcar writes the root hash at byte 0x40 of an x86_64 kernel and at 512 of an arm64
    one; the grubenv must carry it for the configured architecture."""
    image = image_file(tmp_path / "disk.img", GOOD)
    root = esp(tmp_path, vmlinuz_b=kernel_with_hash(HASH_B, offset=offset))
    block = grubenv.render(grubenv.slot_vars(slots.slots_of(
        gptformat.read_table(_reader(image)).entries()), {}))  # fmt: skip
    (root / "flatcar" / "grubenv").write_bytes(block)
    conf = tmp_path / "updater.toml"
    conf.write_text(f'[boot]\narch = "{arch}"\n')
    code, _, err = run(["--disk", str(image), "--booted", "A", "--esp", str(root),
                        "--config", str(conf), "set-active", "B"], capsys)  # fmt: skip
    assert code == 0, err
    values = grubenv.parse((root / "flatcar" / "grubenv").read_bytes())
    assert values["usr_b_hash"] == HASH_B


def test_grubenv_failure_after_the_gpt_write_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = image_file(tmp_path / "disk.img", GOOD)
    root = esp(tmp_path)
    for copy in COPIES:
        (root / copy).write_bytes(grubenv.render({}))

    def broken(self: bootfs.DirFiles, rel: str, data: bytes) -> None:
        raise OSError(errno.EIO, "Input/output error", rel)

    monkeypatch.setattr(bootfs.DirFiles, "write", broken)
    code, _, err = run(["--disk", str(image), "--booted", "A", "--esp", str(root),
                        "set-active", "B"], capsys)  # fmt: skip
    assert code == 1 and err.count("\n") == 1
    assert "the GPT was written" in err and "grubenv failed: Input/output error" in err
    assert "updater sync" in err
    assert slots.slots_of(gptformat.read_table(_reader(image)).entries())[1].tries == 1

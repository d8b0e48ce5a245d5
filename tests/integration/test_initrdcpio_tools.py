"""The facts initrd read by real archivers: GNU cpio and libarchive's bsdtar.

No root needed. The kernel itself is the final reader (VM tier); here the tools check the format,
and the concatenation case is split the way the kernel's unpacker walks it: decompress one gzip
member, skip zero bytes, expect a newc header at a 4-byte aligned offset.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import zlib
from pathlib import Path

import pytest

from updater.cmdline import BootFacts, OemConfig, facts_env
from updater.guid import Guid
from updater.initrdcpio import FACTS_PATH, append_archive, facts_initrd

from .conftest import need_tools

pytestmark = pytest.mark.integration

FACTS = BootFacts(
    letter="A",
    partuuid=Guid("7130c94a-213a-4e5a-8e26-6cce9662f132"),
    usrhash="0123456789abcdef" * 4,
    first_boot=False,
    oem=OemConfig(oem_id="ec2"),
)
MEMBERS = ["etc", "etc/updater", FACTS_PATH]


def run(argv: list[str], data: bytes | None = None, cwd: Path | None = None) -> bytes:
    proc = subprocess.run(
        argv,
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        check=True,
        cwd=cwd,
        env={**os.environ, "LANG": "C.UTF-8", "TZ": "UTC"},
    )
    return proc.stdout


def text(argv: list[str], data: bytes | None = None, cwd: Path | None = None) -> str:
    return run(argv, data, cwd).decode()


@pytest.fixture
def archive() -> bytes:
    return facts_initrd(FACTS)


def test_cpio_lists_the_members(archive: bytes) -> None:
    need_tools("cpio")
    assert text(["cpio", "-t", "--quiet"], archive).splitlines() == MEMBERS


def test_cpio_extracts_exact_content_and_modes(archive: bytes, tmp_path: Path) -> None:
    need_tools("cpio")
    run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], archive, cwd=tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == MEMBERS
    env = tmp_path / FACTS_PATH
    assert env.read_bytes() == facts_env(FACTS).encode()
    assert env.stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "etc" / "updater").stat().st_mode & 0o7777 == 0o755


def test_bsdtar_lists_and_reads_the_members(archive: bytes, tmp_path: Path) -> None:
    need_tools("bsdtar")
    path = tmp_path / "facts.cpio"
    path.write_bytes(archive)
    assert text(["bsdtar", "-tf", str(path)]).splitlines() == MEMBERS
    verbose = text(["bsdtar", "-tvf", str(path)]).splitlines()
    assert all(" 0 " in line and "1970" in line for line in verbose), verbose  # uid 0, mtime 0
    content = text(["bsdtar", "-xOf", str(path), FACTS_PATH])
    assert content == facts_env(FACTS)


def first_initrd(tmp_path: Path) -> bytes:
    """A gzip-compressed newc archive made by cpio(1), of a length that is not a multiple of 4
    (so the padding in front of the appended archive matters)."""
    src = tmp_path / "src"
    (src / "usr" / "lib").mkdir(parents=True)
    for size in range(1, 64):
        (src / "usr" / "lib" / "os-release").write_text("ID=test\n" + "x" * size)
        raw = run(
            ["cpio", "-o", "-H", "newc", "--quiet"], b"usr\nusr/lib\nusr/lib/os-release\n", src
        )
        packed = gzip.compress(raw, mtime=0)
        if len(packed) % 4:
            return packed
    raise AssertionError("every gzip length was a multiple of 4")


def test_appended_after_gzip_cpio(archive: bytes, tmp_path: Path) -> None:
    need_tools("cpio", "bsdtar")
    first = first_initrd(tmp_path)
    combined = tmp_path / "initrd"
    combined.write_bytes(append_archive(first, archive))

    # libarchive decompresses the gzip member and stops at the first trailer: it sees the first
    # archive intact, nothing after the gzip stream confuses it.
    assert text(["bsdtar", "-tf", str(combined)]).splitlines() == [
        "usr",
        "usr/lib",
        "usr/lib/os-release",
    ]

    # Walk it like the kernel: one gzip member, then zero bytes, then a 4-aligned newc header.
    data = combined.read_bytes()
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    inflate.decompress(data)
    assert inflate.eof
    rest = inflate.unused_data
    consumed = len(data) - len(rest)
    start = consumed + len(rest) - len(rest.lstrip(b"\0"))
    assert start % 4 == 0 and start > consumed  # the padding was needed and is there
    second = data[start:]
    assert second == archive
    assert text(["cpio", "-t", "--quiet"], second).splitlines() == MEMBERS
    (tmp_path / "second.cpio").write_bytes(second)
    assert text(["bsdtar", "-tf", str(tmp_path / "second.cpio")]).splitlines() == MEMBERS


def test_appended_after_plain_cpio_reads_one_after_the_other(
    archive: bytes, tmp_path: Path
) -> None:
    """Uncompressed concatenation: cpio(1) stops at each trailer on a 512-byte block boundary, so
    two runs on the same input see the two archives in turn, as the kernel unpacks them."""
    need_tools("cpio", "sh")
    src = tmp_path / "src"
    (src / "usr").mkdir(parents=True)
    raw = run(["cpio", "-o", "-H", "newc", "--quiet"], b"usr\n", src)
    combined = tmp_path / "initrd"
    combined.write_bytes(append_archive(raw, archive))
    out = text(
        ["sh", "-c", "cpio -t --quiet; echo ==; cpio -t --quiet", "sh"], combined.read_bytes()
    )
    assert out.splitlines() == ["usr", "==", *MEMBERS]

"""The ext4 reader against filesystems made by mkfs.ext4 (-d: filled from a directory), with
debugfs reading the same files back as the oracle; features it does not implement fall back to
debugfs through ``bootfs``; damaged filesystems fail with one DataError line."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import need_tools
from updater import bootfs, ext4
from updater.errors import DataError

pytestmark = pytest.mark.integration

GRUB_CFG = b'set oem_id="qemu"\nset linux_append="flatcar.autologin"\n'


def tree(root: Path) -> dict[str, bytes]:
    files = {"grub.cfg": GRUB_CFG, "sub/deeper/big": os.urandom(300_000), "empty": b""}
    files.update({f"many/f{i}": f"{i}\n".encode() for i in range(400)})  # a multi-block dir
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def make_fs(tmp: Path, name: str, size_mib: int, *options: str) -> tuple[Path, dict[str, bytes]]:
    need_tools("mkfs.ext4", "debugfs")
    src = tmp / f"{name}-src"
    files = tree(src)
    image = tmp / f"{name}.img"
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", *options, "-d", str(src), str(image)], check=True)
    return image, files


def debugfs_cat(image: Path, rel: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True,
                          check=True).stdout  # fmt: skip


def volume(image: Path) -> ext4.Ext4Volume:
    data = image.read_bytes()
    return ext4.Ext4Volume(lambda offset, length: data[offset : offset + length])


@pytest.mark.parametrize(
    "options",
    [(), ("-b", "1024"), ("-b", "4096", "-O", "^64bit"), ("-I", "128", "-O", "^metadata_csum")],
)
def test_reads_what_debugfs_reads(tmp_path: Path, options: tuple[str, ...]) -> None:
    image, files = make_fs(tmp_path, "oem", 32, *options)
    v = volume(image)
    for rel in ("grub.cfg", "sub/deeper/big", "empty", "many/f0", "many/f399"):
        assert v.read(rel, 1 << 20) == debugfs_cat(image, rel) == files[rel], rel
    assert v.read("missing", 100) is None
    assert v.read("grub.cfg/below", 100) is None
    with pytest.raises(DataError, match="more than"):
        v.read("sub/deeper/big", 1000)
    with pytest.raises(DataError, match="not a regular file"):
        v.read("sub", 1000)


def test_block_maps_without_extents_and_the_debugfs_fallback(tmp_path: Path) -> None:
    image, files = make_fs(tmp_path, "ext2ish", 16, "-b", "1024", "-O", "^extent,^64bit")
    v = volume(image)
    assert v.read("grub.cfg", 1000) == GRUB_CFG
    with pytest.raises(ext4.Unsupported):  # 300 kB in 1 KiB blocks needs double-indirect ones
        v.read("sub/deeper/big", 1 << 20)
    files_at = bootfs.Ext4PartitionFiles(str(image), 0)
    assert files_at.read("sub/deeper/big") == files["sub/deeper/big"]  # through debugfs


def test_partition_files_at_an_offset(tmp_path: Path) -> None:
    fs, _ = make_fs(tmp_path, "oem", 8)
    disk = tmp_path / "disk.img"
    offset = 1 << 20
    with disk.open("wb") as out:
        out.write(os.urandom(offset))
        out.write(fs.read_bytes())
        out.write(os.urandom(8192))
    part = bootfs.Ext4PartitionFiles(str(disk), offset, fs.stat().st_size)
    assert part.read("grub.cfg") == GRUB_CFG
    assert part.read("nothing") is None
    assert part.head("grub.cfg", 7) == GRUB_CFG[:7]
    assert part.head("grub.cfg", 1 << 20) == GRUB_CFG
    assert part.head("nothing", 7) is None


def test_damaged_filesystems_fail_with_one_line(tmp_path: Path) -> None:
    base, _ = make_fs(tmp_path, "base", 8, "-b", "4096")

    def damaged(name: str, offset: int, data: bytes) -> Path:
        image = tmp_path / f"{name}.img"
        image.write_bytes(base.read_bytes())
        with image.open("r+b") as f:
            f.seek(offset)
            f.write(data)
        return image

    root_inode = _root_inode_offset(base)
    cases = {
        "magic": damaged("magic", 1024 + 56, b"\0\0"),
        "block size": damaged("bs", 1024 + 24, struct.pack("<I", 9)),
        "inode size": damaged("isz", 1024 + 88, struct.pack("<H", 100)),
        "extent header": damaged("ext", root_inode + 40, b"\0\0"),
        "extent target": damaged("tgt", root_inode + 40 + 12 + 6, struct.pack("<HI", 0, 10**6)),
        "tiny": damaged("tiny", 0, b""),
    }
    with (tmp_path / "tiny.img").open("r+b") as f:
        f.truncate(1000)
    for what, image in cases.items():
        with pytest.raises(DataError) as caught:
            bootfs.Ext4PartitionFiles(str(image), 0).read("grub.cfg")
        message = caught.value.message
        assert "\n" not in message and str(image) in message, (what, message)


def _root_inode_offset(image: Path) -> int:
    """Where debugfs says the root directory's inode (2) is, in bytes."""
    out = subprocess.run(["debugfs", "-R", "imap <2>", str(image)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    where = out.split("located at block")[1]
    block, offset = where.split(", offset")
    return int(block) * 4096 + int(offset, 16)

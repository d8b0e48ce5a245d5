"""Boot partition access that needs no tools: mounted directories and the mount table."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater import bootfs
from updater.errors import DeviceError


def test_mount_point_finds_the_device_and_unescapes(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\n"
        "/dev/null /boot/my\\040esp vfat rw 0 0\n"
        "/dev/zero /oem ext4 ro 0 0\n"
    )
    assert bootfs.mount_point("/dev/null", str(mounts)) == "/boot/my esp"
    assert bootfs.mount_point("/dev/zero", str(mounts)) == "/oem"
    assert bootfs.mount_point("/dev/full", str(mounts)) is None
    assert bootfs.mount_point("/dev/null", str(tmp_path / "missing")) is None


def test_dir_files_read_write_atomically(tmp_path: Path) -> None:
    (tmp_path / "flatcar").mkdir()
    files = bootfs.DirFiles(str(tmp_path))
    assert files.read("flatcar/grubenv") is None
    files.write("flatcar/grubenv", b"one")
    files.write("flatcar/grubenv", b"two")
    assert files.read("flatcar/grubenv") == b"two"
    assert files.head("flatcar/grubenv", 2) == b"tw" and files.head("flatcar/grubenv", 9) == b"two"
    assert files.head("flatcar/grubenv", 0) == b"" and files.head("flatcar/none", 2) is None
    assert sorted(p.name for p in (tmp_path / "flatcar").iterdir()) == ["grubenv"]  # no temp left
    # A read-only backend says so instead of writing.
    with pytest.raises(DeviceError, match="read-only"):
        bootfs.Ext4PartitionFiles(str(tmp_path / "disk.img"), 512).write("grub.cfg", b"x")


def test_partition_node_of_a_regular_file_is_none(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    assert bootfs.partition_node(str(img), 1) is None
    assert bootfs.partition_node(str(tmp_path / "missing"), 1) is None


def test_read_first_takes_the_first_candidate_that_exists_in_each_group(tmp_path: Path) -> None:
    (tmp_path / "coreos").mkdir()
    (tmp_path / "coreos" / "vmlinuz-a").write_bytes(b"older layout")
    (tmp_path / "flatcar").mkdir()
    (tmp_path / "flatcar" / "first_boot").write_bytes(b"")
    files = bootfs.DirFiles(str(tmp_path))
    found = bootfs.read_first([
        (files, ("flatcar/vmlinuz-a", "coreos/vmlinuz-a")),
        (files, ("flatcar/initrd-a", "coreos/initrd-a")),
        (files, ("flatcar/first_boot", "coreos/first_boot")),
        (None, ("grub.cfg",)),  # no such partition
    ])  # fmt: skip
    assert found == (("coreos/vmlinuz-a", b"older layout"), None, ("flatcar/first_boot", b""), None)

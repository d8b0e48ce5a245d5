"""The installer's assets, read and checked before a disk is touched: the EFI binary (a PE image
for this machine: "MZ", the PE signature where e_lfanew points, the COFF machine type of the
Microsoft PE format specification), grub.cfg, ROOT and the OEM files with their grub.cfg read as
data."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from updater.errors import DataError, UsageError
from updater.install import assets


def pe(machine: int) -> bytes:
    """The smallest bytes that carry a PE signature and a machine type where the spec says."""
    head = bytearray(0x80)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x40)  # e_lfanew
    head[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<H", head, 0x44, machine)
    return bytes(head)


def make(tmp: Path, *, machine: int = 0x8664, root: bool = True) -> Path:
    (tmp / "grub").mkdir(parents=True)
    (tmp / "grub/BOOTX64.EFI").write_bytes(pe(machine))
    (tmp / "grub/grub.cfg").write_text("set timeout=0\n")
    if root:
        (tmp / "root/etc").mkdir(parents=True)
    return tmp


def test_loads_grub_root_and_no_oem(tmp_path: Path) -> None:
    found = assets.load(str(make(tmp_path)), "x86_64", None, None)
    assert found.boot_loader_name == "BOOTX64.EFI" and found.boot_loader == pe(0x8664)
    assert found.grub_cfg == b"set timeout=0\n"
    assert found.root == str(tmp_path / "root") and found.oem is None
    assert assets.load(str(make(tmp_path / "b", root=False)), "x86_64", None, None).root is None


def test_the_boot_loader_must_be_a_pe_image_for_this_machine(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="machine type 0xaa64, not 0x8664"):
        assets.load(str(make(tmp_path / "arm", machine=0xAA64)), "x86_64", None, None)
    bad = make(tmp_path / "elf")
    (bad / "grub/BOOTX64.EFI").write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(DataError, match="no MZ header"):
        assets.load(str(bad), "x86_64", None, None)
    cut = make(tmp_path / "cut")
    (cut / "grub/BOOTX64.EFI").write_bytes(pe(0x8664)[:0x42])
    with pytest.raises(DataError, match="no PE header"):
        assets.load(str(cut), "x86_64", None, None)
    with pytest.raises(DataError, match="cannot read .*BOOTAA64.EFI"):
        assets.load(str(make(tmp_path / "x")), "arm64", None, None)


def test_oem_files_from_the_assets_or_a_directory(tmp_path: Path) -> None:
    base = make(tmp_path / "a")
    (base / "oem/qemu/extra").mkdir(parents=True)
    (base / "oem/qemu/grub.cfg").write_text('set oem_id="qemu"\nset linux_append="x=1"\n')
    (base / "oem/qemu/extra/notes").write_text("hello")
    oem = assets.load(str(base), "x86_64", "qemu", None).oem
    assert oem is not None and oem.oem_id == "qemu"
    assert dict(oem.files) == {
        "extra/notes": b"hello", "grub.cfg": b'set oem_id="qemu"\nset linux_append="x=1"\n',
    }  # fmt: skip
    # no directory for the id: a grub.cfg that sets only the id, as flatcar-install writes
    bare = assets.load(str(base), "x86_64", "ec2", None).oem
    assert bare is not None and dict(bare.files) == {"grub.cfg": b'set oem_id="ec2"\n'}
    # a directory named on the command line gives the id itself
    other = tmp_path / "mine"
    other.mkdir()
    (other / "grub.cfg").write_text("set oem_id=metal\n")
    mine = assets.load(str(base), "x86_64", None, str(other)).oem
    assert mine is not None and mine.oem_id == "metal"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ('set oem_id="other"\n', "sets oem_id 'other', not 'qemu'"),
        ('set linux_append="$(reboot)"\n', "uses \\$"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_oem_grub_cfg_is_read_as_data_and_checked(
    tmp_path: Path, cfg: str | bytes, message: str
) -> None:
    base = make(tmp_path)
    (base / "oem/qemu").mkdir(parents=True)
    path = base / "oem/qemu/grub.cfg"
    path.write_bytes(cfg if isinstance(cfg, bytes) else cfg.encode())
    with pytest.raises(DataError, match=message):
        assets.load(str(base), "x86_64", "qemu", None)


def test_oem_directory_holds_only_plain_files(tmp_path: Path) -> None:
    base = make(tmp_path)
    (base / "oem/qemu").mkdir(parents=True)
    (base / "oem/qemu/grub.cfg").write_text('set oem_id="qemu"\n')
    os.symlink("/etc/shadow", base / "oem/qemu/shadow")
    with pytest.raises(DataError, match="only regular files and directories"):
        assets.load(str(base), "x86_64", "qemu", None)
    with pytest.raises(UsageError, match="OEM id"):
        assets.load(str(base), "x86_64", "../etc", None)

"""The GPT disk: ESP (GRUB, kernel, initrd, grubenv, first-boot marker), OEM, ROOT and USR-A.

Filesystems are made in plain files (``mkfs.vfat -C``, ``mkfs.ext4 -d``, mtools) and copied into the
sparse disk at the partition offsets sgdisk chose: no loop devices, no mounts. The ESP's files
and the OEM settings are the installer's (``updater.install.bootfiles``, the assets the image
carries for ``updater install``), so that an installed disk boots as this one does.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from images import progress
from updater import slots
from updater.config import BootSettings
from updater.errors import UpdaterError
from updater.install import bootfiles
from updater.layout import MiB, create_disk, flatcar_layout
from updater.run import run

GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")

# Everything grub/grub.cfg and grub/grub-files.cfg use, built into the EFI binary: the ESP holds
# no module directory (the file backend's menu adds loopback, squash4 and regexp).
GRUB_MODULES = (
    "part_gpt fat ext2 normal configfile search search_label search_fs_uuid search_fs_file "
    "linux echo test loadenv sleep halt reboot cat serial terminal gzio efi_gop all_video "
    "loopback squash4 regexp"
).split()

# Small partitions for test VMs (Flatcar uses 2 GiB USR slots); the disk is sparse anyway.
USR_SIZE = 512 * MiB  # a payload is ~95 MiB today; room for growth and for bigger test payloads
ESP_SIZE = 128 * MiB  # FAT32 needs at least ~33 MiB; two kernels and two initrds take ~45 MiB
OEM_SIZE = 32 * MiB
# ROOT also holds the file backend's images in tests/vm/test_files.py: three of ~110 MiB, a
# staged one of ~145 MiB (the gzip release) and each one's kernel and initrd.
ROOT_SIZE = 1024 * MiB


def copy_into(disk: Path, offset: int, src: Path, limit: int) -> None:
    """Write ``src`` into ``disk`` at ``offset`` without writing zero chunks (keeps it sparse)."""
    size = src.stat().st_size
    if size > limit:
        raise UpdaterError(f"{src.name} ({size} bytes) does not fit its {limit}-byte partition")
    chunk = 1 << 20
    zero = bytes(chunk)
    with src.open("rb") as fin, disk.open("r+b") as fout:
        pos = 0
        while block := fin.read(chunk):
            if block != zero[: len(block)]:
                fout.seek(offset + pos)
                fout.write(block)
            pos += len(block)


def mtools(argv: list[str]) -> None:
    # mtools refuses images whose geometry it doubts unless told not to check.
    run(argv, env={"MTOOLS_SKIP_CHECK": "1"})


def make_esp(work: Path, kernel: Path, initrd: Path, assets: Path, root_hash: str) -> Path:
    """The ESP of a disk with version 1 in USR-A: what ``updater install`` writes, plus the
    initrd for USR-B (the VM tests put only a kernel there when they write B by hand)."""
    progress("ESP: GRUB, kernel, initrd, grubenv")
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", "EFI-SYSTEM", "-C", str(esp), str(ESP_SIZE // 1024)])
    loader = "BOOTX64.EFI"
    files = bootfiles.fresh_esp(
        loader, (assets / "grub" / loader).read_bytes(),
        (assets / "grub" / "grub.cfg").read_bytes(), layout_slots(), {"A": root_hash},
        BootSettings().panic,
    )  # fmt: skip
    files = {"flatcar/vmlinuz-a": kernel.read_bytes(), "flatcar/initrd-a": initrd.read_bytes(),
             "flatcar/initrd-b": initrd.read_bytes(), **files}  # fmt: skip
    img = ["-i", str(esp)]
    mtools(["mmd", *img, *(f"::/{d}" for d in bootfiles.DIRECTORIES)])
    staged = work / "esp-file"
    for name, data in files.items():
        staged.write_bytes(data)
        mtools(["mcopy", *img, str(staged), f"::/{name}"])
    return esp


def make_ext4(work: Path, name: str, label: str, content: Path, size: int) -> Path:
    image = work / f"{name}.img"
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-L", label, "-d", str(content), "-E", "root_owner=0:0", str(image)])
    return image


def _special_files(directory: str, names: list[str]) -> list[str]:
    """Device nodes, fifos and sockets: never copied by reading them (see root_tree)."""
    return [
        n
        for n in names
        if not stat.S_ISDIR(m := os.lstat(os.path.join(directory, n)).st_mode)
        and not stat.S_ISREG(m)
        and not stat.S_ISLNK(m)
    ]


def root_tree(tree: Path, work: Path) -> Path:
    """ROOT's contents: the tree without /usr (an empty mount point) and without /boot's files
    (they live on the ESP). The merged-usr symlinks bin, sbin, lib, lib64 stay on ROOT."""
    progress("ROOT: the tree without /usr")
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    # /dev, /proc, /sys and /run are mount points: copying the device nodes mmdebstrap leaves in
    # /dev would read /dev/zero or /dev/full forever and fill the host's disk.
    mount_points = ("usr", "boot", "dev", "proc", "sys", "run")
    for entry in tree.iterdir():
        if entry.name in mount_points or entry.name.startswith(("vmlinuz", "initrd.img")):
            continue
        dest = root / entry.name
        if entry.is_symlink():
            dest.symlink_to(os.readlink(entry))
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, ignore=_special_files)
        else:
            shutil.copy2(entry, dest)
    for mount_point in mount_points:
        (root / mount_point).mkdir(mode=0o755)
    return root


def make_oem(work: Path, assets: Path) -> Path:
    """OEM with the settings ``updater install --oem qemu`` takes from the same assets."""
    return make_ext4(work, "oem", "OEM", assets / "oem" / "qemu", OEM_SIZE)


def make_disk(work: Path, out: Path, usr_a: Path, esp: Path, oem: Path, root: Path) -> None:
    progress("disk: GPT, ESP, USR-A, OEM, ROOT")
    layout = flatcar_layout(
        usr_size=USR_SIZE, esp_size=ESP_SIZE, oem_size=OEM_SIZE, root_size=ROOT_SIZE
    )
    out.unlink(missing_ok=True)
    create_disk(layout, str(out), overwrite=True)
    offsets = partition_offsets(out)
    for label, src in (("EFI-SYSTEM", esp), ("USR-A", usr_a), ("OEM", oem), ("ROOT", root)):
        number = layout.partition(label).number
        start, size = offsets[number]
        copy_into(out, start, src, size)


def partition_offsets(disk: Path) -> dict[int, tuple[int, int]]:
    """Partition number -> (byte offset, byte size), as sgdisk laid them out."""
    text = run(["sgdisk", "--print", str(disk)]).stdout.decode()
    found: dict[int, tuple[int, int]] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Number"):
            in_table = True
            continue
        fields = line.split()
        if in_table and len(fields) >= 3 and fields[0].isdigit():
            first, last = int(fields[1]), int(fields[2])
            found[int(fields[0])] = (first * 512, (last - first + 1) * 512)
    return found


def layout_slots() -> list[slots.Slot]:
    """The usr slots of the test disk's layout, as its partition table holds them."""
    layout = flatcar_layout(usr_size=USR_SIZE, esp_size=ESP_SIZE, oem_size=OEM_SIZE)
    return [
        slots.Slot(p.number, p.label, p.partuuid, p.attributes)
        for p in layout.partitions
        if p.type_guid == slots.USR_TYPE
    ]

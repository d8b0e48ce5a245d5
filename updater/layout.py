"""Partition layouts: the Flatcar disk layout as a plain value, rendered to one ``sgdisk`` call.

Build the model (``flatcar_layout``), render it (``sgdisk_argv``), then apply it (``create_disk``).
Only ``create_disk`` touches a file. This module does not make filesystems or write partition
contents; the image builder in ``images/`` does that.

Partition numbers, labels, type GUIDs and the USR partition GUIDs follow Flatcar's
``disk_layout.json``; partitions 5 and 8 are left out as in the project's reference layout.
Other GUIDs are derived from the label so that the same inputs give the same image bytes
(images are cached by content hash).
"""

from __future__ import annotations

import os

from updater import slots
from updater.errors import UsageError
from updater.guid import Guid, name_based_guid
from updater.records import dataclass
from updater.run import require_tool, run

MiB = 1 << 20
GiB = 1 << 30

ESP_TYPE = Guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT_TYPE = Guid("21686148-6449-6e6f-744e-656564454649")
LINUX_DATA_TYPE = Guid("0fc63daf-8483-4772-8e79-3d69d8477de4")
OEM_CONFIG_TYPE = Guid("c95dc21a-df0e-4340-8d7b-26cbfa9a03e0")
ROOT_TYPE = Guid("3884dd41-8582-4404-b9a8-e9b84f2df50e")
USR_A_UUID = Guid("7130c94a-213a-4e5a-8e26-6cce9662f132")
USR_B_UUID = Guid("e03dd35c-7c2d-4a47-b3fe-27f15780a57c")
_NAMESPACE = Guid("4f1b4a6e-9d0e-4c6b-8a4f-2f4b1f0c7a51")  # this project's GUID namespace


@dataclass(frozen=True)
class PartitionSpec:
    number: int
    label: str
    type_guid: Guid
    size: int  # bytes; 0 = the rest of the disk
    partuuid: Guid
    attributes: int = 0


@dataclass(frozen=True)
class DiskLayout:
    partitions: tuple[PartitionSpec, ...]
    size: int  # whole disk, bytes
    disk_guid: Guid

    def partition(self, label: str) -> PartitionSpec:
        for p in self.partitions:
            if p.label == label:
                return p
        raise KeyError(label)


def _derived(label: str) -> Guid:
    return name_based_guid(_NAMESPACE, label)


def flatcar_layout(
    *,
    usr_size: int = 2 * GiB,
    esp_size: int = 128 * MiB,
    oem_size: int = 128 * MiB,
    root_size: int = 256 * MiB,
) -> DiskLayout:
    """Flatcar's layout. USR-A starts as the installed, proven slot (P1 T0 S1); USR-B empty."""
    usr_a = slots.encode(0, priority=1, tries=0, successful=True)
    parts = (
        PartitionSpec(1, "EFI-SYSTEM", ESP_TYPE, esp_size, _derived("EFI-SYSTEM")),
        PartitionSpec(2, "BIOS-BOOT", BIOS_BOOT_TYPE, 2 * MiB, _derived("BIOS-BOOT")),
        PartitionSpec(3, "USR-A", slots.USR_TYPE, usr_size, USR_A_UUID, usr_a),
        PartitionSpec(4, "USR-B", slots.USR_TYPE, usr_size, USR_B_UUID, 0),
        PartitionSpec(6, "OEM", LINUX_DATA_TYPE, oem_size, _derived("OEM")),
        PartitionSpec(7, "OEM-CONFIG", OEM_CONFIG_TYPE, 64 * MiB, _derived("OEM-CONFIG")),
        PartitionSpec(9, "ROOT", ROOT_TYPE, 0, _derived("ROOT")),
    )
    # 1 MiB before the first partition, 1 MiB slack for alignment and the backup table.
    total = 2 * MiB + sum(p.size for p in parts) + root_size
    for p in parts:
        if p.size % MiB:
            raise UsageError(f"{p.label} size must be a whole number of MiB")
    return DiskLayout(parts, total, _derived("disk"))


def sgdisk_argv(layout: DiskLayout, target: str, sector_size: int = 512) -> list[str]:
    """The single sgdisk invocation that writes ``layout`` (1 MiB aligned) to ``target``."""
    argv = [
        "sgdisk",
        "--clear",
        f"--set-alignment={MiB // sector_size}",
        f"--disk-guid={layout.disk_guid}",
    ]
    for p in layout.partitions:
        end = f"+{p.size // MiB}M" if p.size else "0"
        argv += [
            f"--new={p.number}:0:{end}",
            f"--typecode={p.number}:{p.type_guid}",
            f"--change-name={p.number}:{p.label}",
            f"--partition-guid={p.number}:{p.partuuid}",
        ]
        if p.attributes:
            argv.append(f"--attributes={p.number}:=:{p.attributes:016x}")
    argv.append(target)
    return argv


def create_disk(
    layout: DiskLayout, path: str, *, overwrite: bool = False, sector_size: int = 512
) -> None:
    """Create a sparse image file (or partition an existing block device) with ``layout``.

    Image files are always 512-byte-sector disks; for 4096 pass a loop device made with
    ``losetup --sector-size 4096`` and ``sector_size=4096``.
    """
    require_tool("sgdisk", "gdisk")
    is_new = not os.path.exists(path)
    if not is_new and not overwrite:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    if is_new or os.path.isfile(path):
        with open(path, "wb") as f:
            f.truncate(layout.size)
    run(sgdisk_argv(layout, path, sector_size))

"""The finished disk read back, after the partition table was written: what a firmware, GRUB and
the initrd will read must be what the install meant to write.

- the GPT through the project's reader: both copies valid and equal, the entry array byte for
  byte the planned one, the disk GUID the planned one;
- the same table through libparted: partition numbers, sectors and names;
- the A/B state through the slot rules: the slot GRUB's rule boots next is USR-A;
- every file written to the ESP and the OEM partition, read back through the new partition
  nodes (their page caches are new: this reads the disk) and compared with what was written.

The slots' contents were verified when they were written: the slot writer read each slot back
past the page cache against the signed verity root hash.
"""

from __future__ import annotations

from collections.abc import Mapping

from updater import bootfs, gpt, slots
from updater.errors import VerificationError
from updater.install import partition
from updater.install.plan import DiskPlan


def check(disk: str, plan: DiskPlan, esp: Mapping[str, bytes], oem: Mapping[str, bytes]) -> None:
    with gpt.locked(disk, writable=False) as d:
        table = gpt.read_table(d)
    if table.needs_repair:
        problems = f"primary: {table.primary.problem or 'valid'}, backup: " + (
            table.backup.problem or "stale" if table.backup_stale else "valid"
        )
        raise VerificationError(f"{disk}: the new GPT reads back damaged ({problems})")
    if table.entries_raw != plan.entry_array() or table.header.disk_guid != plan.layout.disk_guid:
        raise VerificationError(f"{disk}: the GPT on the disk is not the planned one")
    expected = tuple(
        (p.spec.number, p.first_lba, p.last_lba, p.spec.label) for p in plan.placed
    )
    if partition.read_back(disk) != expected:
        raise VerificationError(f"{disk}: libparted reads other partitions than were planned")
    found = slots.slots_of(table.entries())
    first = slots.choose_next(found)
    if first is None or first.label != "USR-A":
        raise VerificationError(f"{disk}: the slot rules would not boot USR-A first")
    esp_files = bootfs.esp_of(disk, table)
    if esp_files is None:
        raise VerificationError(f"{disk}: the ESP is not found")
    _files(esp_files, esp, "ESP")
    oem_files = bootfs.oem_of(disk, table)
    if oem and oem_files is None:
        raise VerificationError(f"{disk}: the OEM partition is not found")
    if oem_files is not None:
        _files(oem_files, oem, "OEM partition")


def _files(files: bootfs.BootFiles, wanted: Mapping[str, bytes], where: str) -> None:
    for rel, data in wanted.items():
        found = files.read(rel)
        if found != data:
            what = "missing" if found is None else "different"
            raise VerificationError(f"{rel} on the {where} is {what} after the install")

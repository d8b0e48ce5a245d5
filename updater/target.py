"""What an updater command works on, resolved once from the global options: a frozen ``Target``.

- the disk: ``--disk PATH``, else the disk holding the booted /usr (``updater.bootdisk``);
- the booted slot: ``--booted PART``, else the partition below the mounted /usr when it is on
  this disk, cross-checked with the PARTUUID the kernel command line names, if it names one;
- the ESP and the OEM partition, under one rule for the boot plan and the grubenv alike
  (``bootfs.esp_of`` / ``oem_of``: the directory given, else the disk's own partition);
- the running kernel's command line, read once;
- the machine's ``[boot]`` settings (where the root hash sits in a kernel, ``panic=``, ...).

``updater.state``, the boot planner and the flows take a Target, as python-tuf's ``Updater``
keeps the inputs it resolved once; nothing below the CLI sees argparse. Resolving reads the GPT
(to name the slots and find the ESP and OEM), /proc and /sys; it writes nothing, and it makes
no A/B decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from updater import bootdisk, bootfs, gpt, slots
from updater.bootfs import BootFiles
from updater.config import BootSettings
from updater.errors import DeviceError, UsageError


@dataclass(frozen=True)
class Target:
    disk: str
    booted: int | None  # partition number of the booted slot; None: not known (an image file)
    esp: BootFiles | None  # None: the disk has no ESP
    oem: BootFiles | None  # None: the disk has no OEM partition
    cmdline: str  # the running kernel's command line ("" when unreadable)
    boot: BootSettings = field(default_factory=BootSettings)


def resolve(
    disk: str | None = None,
    booted: str | None = None,
    *,
    esp: str | None = None,
    oem: str | None = None,
    settings: BootSettings | None = None,
    proc: str = "/proc",
    sys: str = "/sys",
    dev: str = "/dev",
) -> Target:
    """The Target of the global options ``--disk``, ``--booted``, ``--esp``, ``--oem``."""
    running_cmdline = bootdisk.read_cmdline(f"{proc}/cmdline")
    running: bootdisk.BootedUsr | None
    if disk is None:
        running = _booted_usr(running_cmdline, proc, sys, dev)
        path = running.disk
    else:
        path = disk
        try:
            running = bootdisk.booted_usr(running_cmdline, proc, sys, dev)
        except DeviceError:
            running = None  # the running system's /usr is not what --disk names anyway
        if running is not None and not bootdisk.same_disk(running.disk, path):
            running = None
    with gpt.locked(path, writable=False) as d:
        table = gpt.read_table(d)
    found = slots.slots_of(table.entries())
    if not found:
        raise DeviceError(f"{path}: no partitions of the usr slot type {slots.USR_TYPE}")
    if booted is not None:
        if booted.strip().lower() in slots.ROLES:
            raise UsageError(
                f"--booted {booted} names no slot", hint="give a partition number, label or letter"
            )
        number: int | None = slots.resolve(found, booted).partition
    else:
        number = _running_slot(found, running, running_cmdline)
    return Target(
        disk=path,
        booted=number,
        esp=bootfs.esp_of(path, table, esp),
        oem=bootfs.oem_of(path, table, oem),
        cmdline=running_cmdline,
        boot=settings if settings is not None else BootSettings(),
    )


def resolve_disk(
    disk: str | None, proc: str = "/proc", sys: str = "/sys", dev: str = "/dev"
) -> str:
    """``disk``, or the disk holding the booted /usr (for commands that need no slots)."""
    if disk is not None:
        return disk
    return _booted_usr(bootdisk.read_cmdline(f"{proc}/cmdline"), proc, sys, dev).disk


def _booted_usr(cmdline: str, proc: str, sys: str, dev: str) -> bootdisk.BootedUsr:
    running = bootdisk.booted_usr(cmdline, proc, sys, dev)
    if running is None:
        raise DeviceError(
            "cannot tell which disk holds the booted /usr: /usr is not mounted from a "
            "partition and the kernel command line has no mount.usr=PARTUUID= or "
            "verity.usr=PARTUUID=",
            hint="pass --disk PATH",
        )
    return running


def _running_slot(
    found: tuple[slots.Slot, ...], running: bootdisk.BootedUsr | None, cmdline: str
) -> int | None:
    if running is None:
        return None
    slot = next((s for s in found if s.partition == running.partition), None)
    if slot is None:
        return None  # /usr comes from a partition that is no slot
    named = bootdisk.usr_partuuid(cmdline)
    if named is not None and named != slot.partuuid:
        raise DeviceError(
            f"/usr is mounted from partition {slot.partition} ({slot.label!r}, PARTUUID "
            f"{slot.partuuid}), but the kernel command line names PARTUUID {named}",
            hint="the initrd mounted another /usr than the boot loader chose; reboot",
        )
    return slot.partition

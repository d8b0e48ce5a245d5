"""What an updater command works on, resolved once from the global options: a frozen ``Target``.

- the disk: ``--disk PATH``, else the disk holding the booted /usr (``updater.bootdisk``);
- the booted slot: ``--booted PART``, else the partition below the mounted /usr when it is on
  this disk, cross-checked with the PARTUUID the kernel command line names, if it names one;
- the ESP and the OEM partition, under one rule for the boot plan and the grubenv alike
  (``bootfs.esp_of`` / ``oem_of``: the directory given, else the disk's own partition);
- the running kernel's command line, read once (``bootdisk.running``, with the booted /usr);
- the machine's ``[boot]`` settings (where the root hash sits in a kernel, ``panic=``, ...).

``updater.state``, the boot planner and the flows take a Target, as python-tuf's ``Updater``
keeps the inputs it resolved once; nothing below the CLI sees argparse. Resolving reads the GPT
(to name the slots and find the ESP and OEM) and the ESP's grubenv copies in one go under a
shared lock, and keeps them as the Target's ``snapshot``, so that ``state.load`` does not read
the disk again; it reads /proc and /sys; it writes nothing, and it makes no A/B decision.
"""

from __future__ import annotations

from updater import bootdisk, bootfs, gpt, slots
from updater.config import BootSettings
from updater.errors import DeviceError, UsageError
from updater.espenv import COPIES
from updater.gptformat import GptTable
from updater.records import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from updater.bootfs import BootFiles


@dataclass
class Snapshot:
    """The disk as it was read while resolving, under one shared lock: what ``state.as_resolved``
    reads the A/B state from (``state.change`` reads both again under its exclusive lock).
    ``current`` turns False for good at the first ``state.change`` through the Target: from then
    on the snapshot is history, and ``as_resolved`` reads the disk again."""

    table: GptTable
    grubenv: tuple[bytes | None, ...] | None  # the ESP's copies (espenv.COPIES); None: not read
    current: bool = True


@dataclass(frozen=True)
class Target:
    disk: str
    booted: int | None  # partition number of the booted slot; None: not known (an image file)
    esp: BootFiles | None  # None: the disk has no ESP
    oem: BootFiles | None  # None: the disk has no OEM partition
    cmdline: str  # the running kernel's command line ("" when unreadable)
    boot: BootSettings = field(default_factory=BootSettings)
    # The disk as read when resolved (None for a Target built by hand: state.load reads it).
    # Resolve again after a change: a Target is not refreshed.
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)


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
    running = bootdisk.running(disk, proc, sys, dev)
    path = running.disk

    def under_lock(d: gpt.Disk, table: GptTable) -> tuple[GptTable, bootfs.BootPartitions]:
        # The table and the ESP's grubenv copies under one shared lock, as state.change writes them
        return table, bootfs.locate(path, table, esp, oem, read=COPIES)

    table, found_on = gpt.with_table(path, under_lock, writable=False)
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
        number = _running_slot(found, running.usr, running.cmdline)
    return Target(
        disk=path,
        booted=number,
        esp=found_on.esp,
        oem=found_on.oem,
        cmdline=running.cmdline,
        boot=settings if settings is not None else BootSettings(),
        snapshot=Snapshot(table, found_on.esp_files),
    )


def resolve_disk(
    disk: str | None, proc: str = "/proc", sys: str = "/sys", dev: str = "/dev"
) -> str:
    """``disk``, or the disk holding the booted /usr (for commands that need no slots)."""
    if disk is not None:
        return disk
    return bootdisk.running(None, proc, sys, dev).disk


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

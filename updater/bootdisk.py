"""Find the booted /usr partition and the disk that holds it.

The truth is what is mounted at ``/usr``: its device (``/proc/self/mountinfo``), and, when that is
a device-mapper target such as the dm-verity ``/dev/mapper/usr``, the one partition below it
(``/sys/dev/block/MAJ:MIN/slaves``); sysfs then names the partition's number and its disk. This
works however the slot was chosen, also after a kexec with the boot facts in the initrd, when
the kernel command line names no partition at all.

The command line (``verity.usr=PARTUUID=<uuid>`` or ``mount.usr=PARTUUID=<uuid>``, Flatcar's
grub.cfg) is the fallback where ``/usr`` is not a mount of its own, and a cross-check where both
exist (``Target`` compares the PARTUUID it names with the mounted partition's).

This module reads /proc, /sys and /dev only; it does not read partition tables.
"""

from __future__ import annotations

import os

from updater.errors import DeviceError
from updater.guid import Guid
from updater.records import dataclass

_USR_KEYS = ("verity.usr", "mount.usr", "usr")


@dataclass(frozen=True)
class BootedUsr:
    """The partition the running /usr comes from."""

    disk: str  # whole-disk device node, e.g. /dev/vda
    partition: int  # its partition number on that disk
    how: str  # "mounted /usr" or "kernel command line", for messages


def usr_partuuid(cmdline: str) -> Guid | None:
    """The PARTUUID of the booted /usr named on ``cmdline``, or None when it names none."""
    values: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep:
            values[key] = value  # the kernel, like this, lets the last occurrence win
    for key in _USR_KEYS:
        value = values.get(key, "")
        if value.upper().startswith("PARTUUID="):
            try:
                return Guid(value.split("=", 1)[1])
            except ValueError:
                return None
    return None


def read_cmdline(path: str = "/proc/cmdline") -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def usr_device(mountinfo: str) -> str | None:
    """``MAJ:MIN`` of the filesystem mounted at /usr (the last, visible, one), from the text
    of /proc/self/mountinfo; None when /usr is not a mount point of its own."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/usr":
            found = fields[2]
    return found


def lower_partition(majmin: str, sys: str = "/sys") -> str | None:
    """The sysfs directory of the partition holding block device ``majmin``: the device itself
    when it is a partition, else, through device-mapper's ``slaves``, the single partition
    below it (dm-verity keeps data and hash tree in one). None when it is neither."""
    node = os.path.join(sys, "dev", "block", majmin)
    for _ in range(8):  # dm stacked on dm, a few levels at most
        try:
            real = os.path.realpath(node, strict=True)
        except OSError:
            return None
        if os.path.isfile(os.path.join(real, "partition")):
            return real
        try:
            below = sorted(os.listdir(os.path.join(real, "slaves")))
        except OSError:
            return None
        if len(below) != 1:
            return None  # no lower device, or several (a separate hash device): ambiguous
        node = os.path.join(real, "slaves", below[0])
    return None


def mounted_usr(proc: str = "/proc", sys: str = "/sys", dev: str = "/dev") -> BootedUsr | None:
    """The partition below the mounted /usr and its disk, or None."""
    try:
        majmin = usr_device(_read(os.path.join(proc, "self", "mountinfo")))
    except OSError:
        return None
    part = lower_partition(majmin, sys) if majmin else None
    if part is None:
        return None
    try:
        number = int(_read(os.path.join(part, "partition")))
    except (OSError, ValueError):
        return None
    return BootedUsr(os.path.join(dev, os.path.basename(os.path.dirname(part))), number,
                     "mounted /usr")  # fmt: skip


def disk_of_partuuid(partuuid: Guid, dev: str = "/dev", sys: str = "/sys") -> BootedUsr:
    """The whole-disk device node (e.g. /dev/vda) holding the partition with ``partuuid``."""
    link = os.path.join(dev, "disk", "by-partuuid", str(partuuid))
    if not os.path.exists(link):
        raise DeviceError(f"no device for PARTUUID {partuuid} ({link} is missing)")
    name = os.path.basename(os.path.realpath(link))
    sys_part = os.path.join(sys, "class", "block", name)
    try:
        number = int(_read(os.path.join(sys_part, "partition")))
    except (OSError, ValueError):
        raise DeviceError(f"{name} is not a partition") from None
    parent = os.path.basename(os.path.dirname(os.path.realpath(sys_part)))
    return BootedUsr(os.path.join(dev, parent), number, "kernel command line")


def booted_usr(
    cmdline: str, proc: str = "/proc", sys: str = "/sys", dev: str = "/dev"
) -> BootedUsr | None:
    """The booted /usr partition: the mounted one, else the one the command line names, else
    None. DeviceError when the command line names a partition that does not exist here."""
    found = mounted_usr(proc, sys, dev)
    if found is not None:
        return found
    partuuid = usr_partuuid(cmdline)
    return None if partuuid is None else disk_of_partuuid(partuuid, dev, sys)


@dataclass(frozen=True)
class Running:
    """What the running system says about its boot, read once: the disk in question, the
    kernel command line, and the booted /usr partition when it is on that disk."""

    disk: str  # the disk given, else the one holding the booted /usr
    cmdline: str  # "" when unreadable
    usr: BootedUsr | None


def running(disk: str | None, proc: str = "/proc", sys: str = "/sys", dev: str = "/dev") -> Running:
    """The running system's command line and booted /usr, for ``disk``: with ``disk`` None, the
    disk holding the booted /usr (DeviceError when that cannot be told); with a disk given, the
    booted /usr only when it is on that disk (else None, also when it cannot be found)."""
    cmdline = read_cmdline(f"{proc}/cmdline")
    if disk is None:
        found = booted_usr(cmdline, proc, sys, dev)
        if found is None:
            raise DeviceError(
                "cannot tell which disk holds the booted /usr: /usr is not mounted from a "
                "partition and the kernel command line has no mount.usr=PARTUUID= or "
                "verity.usr=PARTUUID=",
                hint="pass --disk PATH",
            )
        return Running(found.disk, cmdline, found)
    try:
        found = booted_usr(cmdline, proc, sys, dev)
    except DeviceError:
        found = None  # the running system's /usr is not what --disk names anyway
    if found is not None and not same_disk(found.disk, disk):
        found = None
    return Running(disk, cmdline, found)


def same_disk(a: str, b: str) -> bool:
    """Whether two paths name the same disk (the same block device, or the same file)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if sa.st_rdev and sb.st_rdev:
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

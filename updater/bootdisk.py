"""Find the booted /usr partition and the disk that holds it, from the kernel command line.

The command line names the booted slot as ``mount.usr=PARTUUID=<uuid>`` or, on verity builds,
``verity.usr=PARTUUID=<uuid>`` (Flatcar's grub.cfg). The partition is then found through udev's
``/dev/disk/by-partuuid`` links and its parent disk through sysfs. This module does not read
partition tables.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from updater.errors import DeviceError

_USR_KEYS = ("verity.usr", "mount.usr", "usr")


def usr_partuuid(cmdline: str) -> uuid.UUID | None:
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
                return uuid.UUID(value.split("=", 1)[1])
            except ValueError:
                return None
    return None


def read_cmdline(path: str = "/proc/cmdline") -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def disk_of_partuuid(partuuid: uuid.UUID, dev: str = "/dev", sys: str = "/sys") -> str:
    """The whole-disk device node (e.g. /dev/vda) holding the partition with ``partuuid``."""
    link = Path(dev, "disk", "by-partuuid", str(partuuid))
    if not link.exists():
        raise DeviceError(f"no device for PARTUUID {partuuid} ({link} is missing)")
    name = os.path.basename(os.path.realpath(link))
    sys_part = Path(sys, "class", "block", name)
    if not (sys_part / "partition").exists():
        raise DeviceError(f"{name} is not a partition")
    parent = os.path.basename(os.path.dirname(os.path.realpath(sys_part)))
    return str(Path(dev, parent))


def booted_disk(cmdline: str) -> str:
    partuuid = usr_partuuid(cmdline)
    if partuuid is None:
        raise DeviceError(
            "cannot tell which disk holds the booted /usr: the kernel command line has no "
            "mount.usr=PARTUUID= or verity.usr=PARTUUID=",
            hint="pass --disk PATH",
        )
    return disk_of_partuuid(partuuid)

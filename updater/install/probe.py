"""What a disk is and what it holds, read before the installer decides anything.

Three views, because each knows things the others do not:

- libparted (``partition.inspect``): sector sizes, the model, a partition table and its
  partitions, a filesystem on the whole disk;
- libblkid through ``wipefs --no-act``: every signature it knows at the whole-disk level, also
  the ones libparted ignores (LVM, RAID, LUKS, ZFS, swap, a lone GPT header);
- the kernel: sysfs (a partition or a whole disk, the serial number, the partitions and what is
  stacked on them), ``/proc/self/mountinfo``, ``/proc/swaps``, the booted ``/usr`` named on the
  command line, and an ``O_EXCL`` open, which the kernel refuses while anything claims the disk.

Nothing is written and nothing is decided here: ``plan.refusal`` decides from ``DiskFacts``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from updater import bootdisk, jsonout
from updater.errors import DeviceError
from updater.install import partition
from updater.install.plan import DiskFacts
from updater.records import replace
from updater.run import require_tool, run

Dev = tuple[int, int]


def disk_facts(
    path: str, *, proc: str = "/proc", sys: str = "/sys", dev: str = "/dev"
) -> DiskFacts:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DeviceError(f"cannot use {path}: {exc.strerror}") from None
    if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise DeviceError(f"{path} is neither a block device nor an image file")
    facts = DiskFacts(path, "", "", 0, 0, stat.S_ISBLK(st.st_mode), True, None)
    if facts.block:
        facts = _kernel_view(facts, (os.major(st.st_rdev), os.minor(st.st_rdev)), proc, sys, dev)
        if facts.running or facts.mounts or facts.holders:
            return facts  # refused whatever it holds; libparted may not even open it
    view = partition.inspect(path)
    signatures = _signatures(path)
    if view.filesystem:
        signatures = (*signatures, f"a {view.filesystem} filesystem (libparted)")
    return replace(
        facts, model=view.model, size=view.sectors * view.sector_size,
        sector_size=view.sector_size, table=view.table, partitions=view.partitions,
        signatures=signatures,
    )  # fmt: skip


def _signatures(path: str) -> tuple[str, ...]:
    require_tool("wipefs", "util-linux")
    proc = run(["wipefs", "--no-act", "--json", path], check=False)
    if proc.returncode != 0:
        # Unreadable means unknown, and unknown is not empty.
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return (f"something wipefs cannot read ({detail[-1] if detail else 'failed'})",)
    if not proc.stdout.strip():
        return ()  # wipefs prints nothing at all when it finds nothing
    try:
        found = jsonout.loads(proc.stdout)["signatures"]
        return tuple(f"{s['type']} at {s['offset']}" for s in found)
    except (ValueError, KeyError, TypeError):
        return ("signatures wipefs reports in an unknown format",)


def _kernel_view(facts: DiskFacts, rdev: Dev, proc: str, sys: str, dev: str) -> DiskFacts:
    node = Path(os.path.realpath(f"{sys}/dev/block/{rdev[0]}:{rdev[1]}"))
    whole = not (node / "partition").exists()
    own = {rdev} | {_devnum(p) for p in node.iterdir() if (p / "partition").is_file()}
    stacked, holders = _stacked(own, sys)
    mounts, running = _mounts(own | stacked, proc)
    mounts += _swaps(own | stacked, proc)
    running = running or _holds_booted_usr(own, dev, proc)
    busy = [] if mounts or holders or running else _claimed(facts.path)
    return replace(
        facts, serial=_serial(node), whole_disk=whole, mounts=tuple(mounts),
        holders=tuple(holders + busy), running=running,
    )  # fmt: skip


def _devnum(node: Path) -> Dev:
    major, _, minor = (node / "dev").read_text().strip().partition(":")
    return int(major), int(minor)


def _serial(node: Path) -> str:
    for rel in ("serial", "device/serial", "wwid"):
        try:
            text = (node / rel).read_bytes()[:128].decode(errors="replace").strip()
        except OSError:
            continue
        if text and text.isprintable():
            return text
    return ""


def _stacked(own: set[Dev], sys: str) -> tuple[set[Dev], list[str]]:
    """Devices stacked on ``own`` (dm, md, bcache), through any depth, and their names."""
    found: set[Dev] = set()
    names: list[str] = []
    todo = list(own)
    while todo:
        major, minor = todo.pop()
        holders = Path(f"{sys}/dev/block/{major}:{minor}/holders")
        for h in sorted(holders.iterdir()) if holders.is_dir() else ():
            num = _devnum(h.resolve())
            if num not in found:
                found.add(num)
                names.append(h.name)
                todo.append(num)
    return found, names


def _mounts(devs: set[Dev], proc: str) -> tuple[list[str], bool]:
    points: list[str] = []
    for line in _read(f"{proc}/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) < 5 or ":" not in fields[2]:
            continue
        major, _, minor = fields[2].partition(":")
        if major.isdigit() and minor.isdigit() and (int(major), int(minor)) in devs:
            points.append(fields[4].replace("\\040", " "))
    return points, any(p in ("/", "/usr") for p in points)


def _swaps(devs: set[Dev], proc: str) -> list[str]:
    found = []
    for line in _read(f"{proc}/swaps").splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) in devs:
            found.append(f"swap ({name})")
    return found


def _holds_booted_usr(own: set[Dev], dev: str, proc: str) -> bool:
    """The booted /usr named on the kernel command line is one of this disk's partitions."""
    partuuid = bootdisk.usr_partuuid(bootdisk.read_cmdline(f"{proc}/cmdline"))
    if partuuid is None:
        return False
    try:
        st = os.stat(f"{dev}/disk/by-partuuid/{partuuid}")
    except OSError:
        return False
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) in own


def _claimed(path: str) -> list[str]:
    """An exclusive open fails (EBUSY) while a filesystem, device-mapper or md claims the disk
    or one of its partitions, whatever the other checks missed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return ["claimed by the kernel (an exclusive open is refused)"]
        raise DeviceError(f"cannot open {path}: {exc.strerror}") from None
    os.close(fd)
    return []


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""

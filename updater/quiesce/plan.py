"""The quiesce before ``kexec -e`` without systemd, as a plain value.

systemd's ``systemctl kexec`` stops the services, syncs and unmounts before it jumps; a machine
whose PID 1 is something else (busybox or sysvinit ``init``, a container host's tiny init) gets
the same sequence from this plan, in the order sysvinit's ``halt`` scripts use:

1. ``stop``: the operator's stop commands (``[quiesce] stop_commands``, e.g. ``/etc/init.d/nginx
   stop``), then ``killall5 -15`` (every process outside the caller's session and the ones
   named with ``-o``: the updater and the shell that started it live on), a grace period, then
   ``killall5 -9``; ``killall5`` answers 2 when nothing was left to kill, which is fine;
2. ``sync``: the page cache onto the disks;
3. ``unmount``: every writable disk filesystem, deepest first, ``umount -r`` (util-linux and
   busybox both remount read-only when the unmount itself fails: ``/`` and ``/usr`` are busy);
   pseudo filesystems and read-only mounts are left alone;
4. ``execute``: ``kexec -e`` (the kernel was loaded before any of this).

Each step has its own timeout and the plan a budget. The fallback is a firmware reboot
(``reboot -f``) after one more sync: once services are stopped, going back is worse than a
slower reboot.

Pure: the mount table comes in as text. Running the steps is ``updater.quiesce.runner``.
"""

from __future__ import annotations

from enum import StrEnum

from updater.config import QuiesceSettings
from updater.records import dataclass


class Phase(StrEnum):
    STOP = "stop"
    SYNC = "sync"
    UNMOUNT = "unmount"
    EXECUTE = "execute"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class QStep:
    """One command of the quiesce; ``ok`` lists exit statuses that count as success, and a
    ``tolerated`` step may fail without ending the plan (its failure is logged)."""

    phase: Phase
    argv: tuple[str, ...]
    timeout: float
    tolerated: bool = False
    ok: tuple[int, ...] = (0,)

    @property
    def what(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class QuiescePlan:
    steps: tuple[QStep, ...]  # ends with the jump
    fallback: tuple[QStep, ...]  # the firmware reboot
    budget: float  # seconds for all of ``steps``; past it, the fallback


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


# Filesystems without data of their own on a disk: nothing to flush, nothing to unmount.
PSEUDO = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "proc", "pstore",
    "ramfs", "rpc_pipefs", "securityfs", "sysfs", "tmpfs", "tracefs", "rootfs",
})  # fmt: skip

MAX_MOUNTS = 4096


def _unescape(field: str) -> str:
    r"""/proc/self/mounts writes space, tab, newline and backslash as \040, \011, \012, \134."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    """The mount table (``/proc/self/mounts``) in mount order; malformed lines are skipped
    (the kernel writes this file, but a line we cannot read is one we must not act on)."""
    mounts = []
    for line in text.splitlines()[:MAX_MOUNTS]:
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(
            Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2], tuple(parts[3].split(",")))
        )
    return mounts


def writable_disks(mounts: list[Mount]) -> list[Mount]:
    """The mounts to unmount or remount read-only, deepest (last mounted) first, ``/`` last;
    a path mounted over twice counts once (the top one)."""
    seen: set[str] = set()
    chosen = []
    for m in reversed(mounts):
        if m.target in seen:
            continue
        seen.add(m.target)
        if m.fstype in PSEUDO or m.read_only:
            continue
        chosen.append(m)
    chosen.sort(key=lambda m: m.target == "/")  # stable: the root after everything else
    return chosen


def plan_quiesce(
    settings: QuiesceSettings, mounts: list[Mount], keep: tuple[int, ...]
) -> QuiescePlan:
    """The quiesce of the module docstring; ``keep`` are the process ids killall5 must spare
    (the updater and its parents up to the session leader)."""
    t = settings.step_timeout
    steps = [QStep(Phase.STOP, argv, t) for argv in settings.stop_commands]
    omit = tuple(a for pid in keep for a in ("-o", str(pid)))
    if settings.kill:
        steps += [
            QStep(Phase.STOP, ("killall5", "-15", *omit), t, ok=(0, 2)),
            QStep(Phase.STOP, ("sleep", f"{settings.grace:g}"), settings.grace + t),
            QStep(Phase.STOP, ("killall5", "-9", *omit), t, ok=(0, 2)),
        ]
    steps.append(QStep(Phase.SYNC, ("sync",), t))
    steps += [
        QStep(Phase.UNMOUNT, ("umount", "-r", m.target), t, tolerated=True)
        for m in writable_disks(mounts)
    ]
    steps.append(QStep(Phase.EXECUTE, ("kexec", "-e"), t))
    fallback = (
        QStep(Phase.FALLBACK, ("sync",), t, tolerated=True),
        QStep(Phase.FALLBACK, ("reboot", "-f"), t),
    )
    return QuiescePlan(tuple(steps), fallback, settings.timeout)

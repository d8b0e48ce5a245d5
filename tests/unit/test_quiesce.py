"""The quiesce without systemd: the plan as a value (order, what is unmounted, what is spared)
and its runner's failure paths (a step that fails or outlives its timeout, a budget that runs
out: the try goes back, then the firmware reboot), with the commands faked."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from updater import bootflow
from updater.config import QuiesceSettings
from updater.kexec import KexecSupport
from updater.quiesce import plan as qplan
from updater.quiesce import runner
from updater.quiesce.plan import Phase, parse_mounts, plan_quiesce, writable_disks
from updater.target import Target

from .test_bootflow import Machine, disk, m, tries_b  # noqa: F401

# As the kernel writes /proc/self/mounts (show_vfsmnt: mangle() turns space, tab, newline and
# backslash into \040, \011, \012, \134).
MOUNTS = """\
/dev/vda9 / ext4 rw,relatime 0 0
devtmpfs /dev devtmpfs rw,nosuid,size=4096k 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/mapper/usr /usr erofs ro,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,mode=755 0 0
/dev/vda1 /boot vfat rw,relatime,fmask=0022 0 0
/dev/vda6 /oem ext4 rw,relatime 0 0
/dev/vdb1 /srv/my\\040data xfs rw,relatime 0 0
/dev/vdb2 /srv/my\\040data/logs ext4 rw,relatime 0 0
overlay /var/lib/c/merged overlay rw,lowerdir=/a,upperdir=/b,workdir=/c 0 0
"""


def test_mount_table_fields_are_unescaped() -> None:
    mounts = parse_mounts(MOUNTS + "garbage\n")
    assert len(mounts) == 11
    assert mounts[8].target == "/srv/my data"
    assert mounts[4].read_only and not mounts[0].read_only
    assert parse_mounts("a /x\\134y\\011z ext4 rw 0 0\n")[0].target == "/x\\y\tz"
    assert parse_mounts("a /x\\9 ext4 rw 0 0\n")[0].target == "/x\\9"  # not octal: kept


def test_writable_disks_deepest_first_root_last() -> None:
    targets = [mnt.target for mnt in writable_disks(parse_mounts(MOUNTS))]
    # /usr is read-only (dm-verity), /dev /proc /sys /run are pseudo filesystems.
    assert targets == ["/var/lib/c/merged", "/srv/my data/logs", "/srv/my data", "/oem",
                       "/boot", "/"]  # fmt: skip


def test_a_path_mounted_twice_counts_once() -> None:
    text = "/dev/vda6 /oem ext4 rw 0 0\n/dev/vda7 /oem ext4 ro 0 0\n"
    assert writable_disks(parse_mounts(text)) == []  # the top mount is read-only


def test_plan_order_and_spared_processes() -> None:
    settings = QuiesceSettings(stop_commands=(("/etc/init.d/app", "stop"),), grace=1.5,
                               step_timeout=7, timeout=50)  # fmt: skip
    plan = plan_quiesce(settings, parse_mounts(MOUNTS), keep=(321, 300))
    argvs = [s.argv for s in plan.steps]
    assert argvs == [
        ("/etc/init.d/app", "stop"),
        ("killall5", "-15", "-o", "321", "-o", "300"),
        ("sleep", "1.5"),
        ("killall5", "-9", "-o", "321", "-o", "300"),
        ("sync",),
        ("umount", "-r", "/var/lib/c/merged"),
        ("umount", "-r", "/srv/my data/logs"),
        ("umount", "-r", "/srv/my data"),
        ("umount", "-r", "/oem"),
        ("umount", "-r", "/boot"),
        ("umount", "-r", "/"),
        ("kexec", "-e"),
    ]
    assert [s.phase for s in plan.steps][-1] is Phase.EXECUTE
    # killall5 exits 2 when it found no process to signal (sysvinit's killall5(8)).
    assert plan.steps[1].ok == (0, 2)
    assert all(s.tolerated for s in plan.steps if s.phase is Phase.UNMOUNT)
    assert not any(s.tolerated for s in plan.steps if s.phase is not Phase.UNMOUNT)
    assert plan.budget == 50 and plan.steps[0].timeout == 7
    assert [s.argv for s in plan.fallback] == [("sync",), ("reboot", "-f")]


def test_plan_without_killing() -> None:
    plan = plan_quiesce(QuiesceSettings(kill=False), [], keep=())
    assert [s.argv for s in plan.steps] == [("sync",), ("kexec", "-e")]


class Commands:
    """A fake ``run``: exit statuses by argv[0], timeouts, and a clock that each command
    advances by ``cost`` seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: list[tuple[str, ...]] = []
        self.status: dict[str, int] = {}
        self.hang: set[str] = set()
        self.now = 0.0
        self.cost = 1.0
        self.timeouts: list[float | None] = []
        monkeypatch.setattr(runner, "run", self.run)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            **_: Any) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        self.ran.append(tuple(argv))
        self.timeouts.append(timeout)
        if argv[0] in self.hang:
            self.now += timeout or 0
            raise subprocess.TimeoutExpired(list(argv), timeout or 0)
        self.now += self.cost
        code = self.status.get(argv[0], 0)
        return subprocess.CompletedProcess(list(argv), code, b"", b"umount: target is busy\n")

    def clock(self) -> float:
        return self.now


@pytest.fixture
def cmds(monkeypatch: pytest.MonkeyPatch) -> Commands:
    return Commands(monkeypatch)


PLAN = plan_quiesce(QuiesceSettings(grace=0, step_timeout=10, timeout=60),
                    parse_mounts("/dev/vda9 / ext4 rw 0 0\n"), keep=(5,))  # fmt: skip


def test_clean_run_times_every_step(cmds: Commands) -> None:
    undone: list[str] = []
    timings = runner.execute(PLAN, undone.append, clock=cmds.clock)
    assert cmds.ran == [s.argv for s in PLAN.steps]
    assert [o for _, _, o in timings.steps] == ["ok"] * len(PLAN.steps)
    assert timings.total() == len(PLAN.steps) * cmds.cost
    assert undone == []


def test_busy_root_is_tolerated(cmds: Commands) -> None:
    cmds.status["umount"] = 32  # util-linux umount: mount failure
    timings = runner.execute(PLAN, lambda why: None, clock=cmds.clock)
    assert cmds.ran[-1] == ("kexec", "-e")
    assert ("failed" in [o for _, _, o in timings.steps])


def test_a_step_that_times_out_falls_back_to_the_firmware(cmds: Commands) -> None:
    cmds.hang.add("sync")
    undone: list[str] = []
    with pytest.raises(runner.QuiesceFailed, match="reboot -f returned without rebooting"):
        runner.execute(PLAN, undone.append, clock=cmds.clock)
    assert len(undone) == 1 and "sync timed out after 10 s" in undone[0]
    # The jump never ran; the fallback's own sync hangs too, and the reboot still comes.
    assert ("kexec", "-e") not in cmds.ran
    assert cmds.ran[-2:] == [("sync",), ("reboot", "-f")]


def test_a_failed_jump_falls_back_to_the_firmware(cmds: Commands) -> None:
    cmds.status["kexec"] = 1
    undone: list[str] = []
    with pytest.raises(runner.QuiesceFailed):
        runner.execute(PLAN, undone.append, clock=cmds.clock)
    assert "kexec -e failed" in undone[0]
    assert cmds.ran[-3:] == [("kexec", "-e"), ("sync",), ("reboot", "-f")]


def test_the_budget_bounds_the_whole_plan(cmds: Commands) -> None:
    cmds.cost = 25.0  # each step within its own timeout, the plan past its 60 s
    undone: list[str] = []
    with pytest.raises(runner.QuiesceFailed):
        runner.execute(PLAN, undone.append, clock=cmds.clock)
    assert "budget of 60 s ran out" in undone[0]
    assert ("kexec", "-e") not in cmds.ran
    # A step never gets more than what is left of the budget.
    assert cmds.timeouts[2] == pytest.approx(10.0)
    assert cmds.ran[-1] == ("reboot", "-f")


def test_a_failed_fallback_says_both(cmds: Commands) -> None:
    cmds.hang.add("killall5")
    cmds.status["reboot"] = 1
    with pytest.raises(runner.QuiesceFailed, match="timed out.*firmware reboot failed too"):
        runner.execute(PLAN, lambda why: None, clock=cmds.clock)


def test_pseudo_filesystems_are_a_closed_list() -> None:
    assert {"proc", "sysfs", "devtmpfs", "tmpfs", "cgroup2"} <= qplan.PSEUDO
    assert not {"ext4", "xfs", "vfat", "btrfs", "overlay"} & qplan.PSEUDO


# ------------------------------------------------------------------ within the reboot flow

NO_SYSTEMD = KexecSupport(tool=True, load_disabled=False, lockdown="none", systemd=False)


def test_without_systemd_the_jump_is_the_quiesce(
    disk: Target, m: Machine, cmds: Commands, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(runner, "read_mounts", lambda: parse_mounts(MOUNTS))
    request = bootflow.Request(quiesce=QuiesceSettings(grace=0))
    report = bootflow.reboot(disk, request, NO_SYSTEMD, m.announce)
    assert report.quiesce is not None
    assert [list(s.argv) for s in report.steps] == [list(s.argv) for s in report.quiesce.steps]
    assert cmds.ran == [s.argv for s in report.quiesce.steps]
    assert ("kexec", "-e") == cmds.ran[-1] and tries_b(disk) == 0


def test_a_quiesce_fallback_gives_the_try_back_before_the_firmware_reboot(
    disk: Target, m: Machine, cmds: Commands, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(runner, "read_mounts", lambda: [])
    cmds.hang.add("sync")
    with pytest.raises(runner.QuiesceFailed):
        bootflow.reboot(disk, bootflow.Request(), NO_SYSTEMD, m.announce)
    assert tries_b(disk) == 1  # GRUB takes the try on the firmware boot
    assert m.ran[-1] == ["kexec", "-u"]  # unloaded before the reboot
    assert cmds.ran[-1] == ("reboot", "-f")


def test_force_keeps_the_short_jump(disk: Target, m: Machine) -> None:  # noqa: F811
    report = bootflow.reboot(disk, bootflow.Request(force=True), NO_SYSTEMD, m.announce)
    assert report.quiesce is None and m.ran[-1] == ["kexec", "-e"]

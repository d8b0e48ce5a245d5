"""The reboot flow's order and undo paths, with kexec and the commands faked (nothing runs):
a failed jump gives the try back, every failure after the load unloads, signals count as
failures until the jump, the firmware path never boots another slot than the one named."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from updater import bootflow, kexec, slots, state
from updater.bootfs import DirFiles
from updater.config import BootSettings, RebootVia
from updater.errors import SlotError, UpdaterError
from updater.kexec import KexecImage, KexecSupport, Method, Step
from updater.run import CommandFailed
from updater.signals import Interrupted
from updater.target import Target

from .memdisk import image_file, kernel_with_hash

OK = KexecSupport(tool=True, load_disabled=False, lockdown="none", systemd=True)
HASH_A, HASH_B = "a" * 64, "b" * 64
GOOD = slots.encode(0, priority=1, tries=0, successful=True)
TRIAL = slots.encode(0, priority=2, tries=1, successful=False)


class Machine:
    """Records the commands the flow runs; ``fail`` names the argv[0:2] that fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        self.ran: list[list[str]] = []
        self.loaded: list[KexecImage] = []
        self.fail: set[tuple[str, ...]] = set()
        self.on_load: Callable[[], None] = lambda: None
        self.announced: list[bootflow.Report] = []
        monkeypatch.setattr(bootflow, "STAGE_DIR", str(tmp / "stage"))
        monkeypatch.setattr(kexec, "load", self.load)
        monkeypatch.setattr(Step, "run", lambda step: self.run(step))
        # Asked after a failed jump whether the system goes down: not unless a test says so.
        self.manager = b"running\n"
        monkeypatch.setattr(kexec, "run", self.ask_manager)
        monkeypatch.setattr(kexec, "MANAGER_PAUSE", 0.0)

    def load(self, image: KexecImage, support: KexecSupport) -> Method:
        self.ran.append(["kexec", "-u"])
        self.ran.append(["kexec", "-s", "-l", image.kernel])
        self.loaded.append(image)
        self.on_load()
        return Method.FILE

    def run(self, step: Step) -> None:
        self.ran.append(list(step.argv))
        if tuple(step.argv[:2]) in self.fail and not step.tolerated:
            raise CommandFailed(step.argv, 1, f"{step.argv[0]}: refused by an inhibitor\n")

    def ask_manager(self, argv: list[str], **kw: Any) -> Any:
        assert argv == ["systemctl", "is-system-running"], argv
        return type("P", (), {"stdout": self.manager})()

    def announce(self, report: bootflow.Report) -> None:
        self.announced.append(report)
        self.ran.append(["<announce>"])


@pytest.fixture
def disk(tmp_path: Path) -> Target:
    image = image_file(tmp_path / "disk.img", GOOD, TRIAL)
    esp = tmp_path / "esp" / "flatcar"
    esp.mkdir(parents=True)
    (esp / "vmlinuz-a").write_bytes(kernel_with_hash(HASH_A))
    (esp / "vmlinuz-b").write_bytes(kernel_with_hash(HASH_B))
    (esp / "initrd-b").write_bytes(b"initrd b")
    return Target(str(image), 3, DirFiles(str(tmp_path / "esp")), None, "", BootSettings())


@pytest.fixture
def m(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Machine:
    return Machine(monkeypatch, tmp_path)


def tries_b(t: Target) -> int:
    return state.load(t).slot(4).tries


def reboot(t: Target, m: Machine, **request: Any) -> bootflow.Report:
    return bootflow.reboot(t, bootflow.Request(**request), OK, m.announce)


def test_kexec_order_load_consume_announce_jump(disk: Target, m: Machine) -> None:
    report = reboot(disk, m)
    assert m.ran == [["kexec", "-u"], ["kexec", "-s", "-l", m.loaded[0].kernel], ["<announce>"],
                     ["systemctl", "kexec"]]  # fmt: skip
    assert report.tries_left == 0 and tries_b(disk) == 0
    assert m.announced[0].consumed is not None and m.announced[0].consumed.tries == 0


def test_failed_jump_gives_the_try_back_and_unloads(disk: Target, m: Machine) -> None:
    m.fail.add(("systemctl", "kexec"))
    with pytest.raises(bootflow.JumpFailed) as caught:
        reboot(disk, m)
    assert tries_b(disk) == 1  # the activation is not lost
    assert m.ran[-2:] == [["systemctl", "kexec"], ["kexec", "-u"]]
    message = caught.value.message
    assert "refused by an inhibitor" in message and "unloaded the kexec kernel" in message
    assert "gave the boot try of USR-B back (tries 1)" in message
    assert "nothing was rebooted" in message


def test_failed_kexec_e_gives_the_try_back_too(disk: Target, m: Machine) -> None:
    m.fail.add(("kexec", "-e"))
    with pytest.raises(bootflow.JumpFailed, match="gave the boot try of USR-B back"):
        reboot(disk, m, force=True)
    assert tries_b(disk) == 1
    assert m.ran[-4:] == [["sync"], ["mount", "-o", "remount,ro", "/"], ["kexec", "-e"],
                          ["kexec", "-u"]]  # fmt: skip


def test_failed_consumption_unloads(disk: Target, m: Machine) -> None:
    """Another tool changes B between the plan and the consumption: refused, and the loaded
    kernel is dropped (else a later plain reboot would kexec into it with no try counted)."""

    def someone_else() -> None:
        state.change(disk, lambda st: slots.set_active(st.slots, 4, tries=3, booted=3))

    m.on_load = someone_else
    with pytest.raises(SlotError, match="changed while preparing"):
        reboot(disk, m)
    assert m.ran[-1] == ["kexec", "-u"] and ["<announce>"] not in m.ran
    assert tries_b(disk) == 3


def test_signal_after_the_load_unloads(disk: Target, m: Machine) -> None:
    m.on_load = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM"):
        reboot(disk, m)
    assert m.ran[-1] == ["kexec", "-u"] and tries_b(disk) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored for the jump


def test_signal_during_the_consumption_waits_for_the_write_then_gives_back(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_change = state.change
    calls: list[int] = []

    def change(*args: Any, **kwargs: Any) -> state.Outcome:
        if not calls:  # the consumption: the signal lands in the middle of it
            os.kill(os.getpid(), signal.SIGHUP)
        calls.append(1)
        return real_change(*args, **kwargs)

    monkeypatch.setattr(state, "change", change)
    with pytest.raises(Interrupted, match="SIGHUP"):
        reboot(disk, m)
    assert len(calls) == 2  # consumed, then given back
    assert tries_b(disk) == 1 and m.ran[-1] == ["kexec", "-u"]


def _killed_jump(m: Machine, returncode: int) -> Callable[[Step], None]:
    def run(step: Step) -> None:
        m.ran.append(list(step.argv))
        if step.argv == ("systemctl", "kexec"):
            raise CommandFailed(step.argv, returncode, "")

    return run


def test_a_jump_stopped_by_its_own_shutdown_keeps_the_kernel(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemctl kexec killed by the stop of the service that ran it, while the system goes
    down: the shutdown is about to execute the loaded kernel; unloading it (and giving the try
    back) would turn the kexec into a firmware reboot into the same trial slot."""
    asked: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> Any:
        asked.append(list(argv))
        return type("P", (), {"stdout": b"stopping\n", "returncode": 1})()

    monkeypatch.setattr(kexec, "run", fake_run)
    monkeypatch.setattr(Step, "run", _killed_jump(m, -signal.SIGTERM))
    report = reboot(disk, m)
    assert asked == [["systemctl", "is-system-running"]]
    assert m.ran[-1] == ["systemctl", "kexec"] and ["kexec", "-u"] not in m.ran[2:]
    assert report.tries_left == 0 and tries_b(disk) == 0  # the try stays taken: the jump runs


@pytest.mark.parametrize("returncode", [1, -signal.SIGINT, -signal.SIGKILL])
def test_a_jump_that_failed_while_the_system_goes_down_keeps_the_kernel(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch, returncode: int
) -> None:
    """The command failed after the shutdown had started, however it failed (seen in the VM:
    ``Failed to connect to bus``, exit status 1, while systemd went on into kexec.target):
    the manager's answer decides, and the kernel stays for the jump."""
    monkeypatch.setattr(kexec, "run", lambda argv, **kw: type("P", (), {"stdout": b"stopping\n"})())
    monkeypatch.setattr(Step, "run", _killed_jump(m, returncode))
    report = reboot(disk, m)
    assert ["kexec", "-u"] not in m.ran[2:] and tries_b(disk) == 0 and report.tries_left == 0


@pytest.mark.parametrize("returncode", [-signal.SIGTERM, 1])
def test_a_jump_that_failed_while_the_system_runs_is_undone(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch, returncode: int
) -> None:
    """Killed or refused while the system is not going down (asked three times): the jump did
    not start; the kernel is unloaded and the try given back."""
    asked: list[str] = []

    def manager(argv: list[str], **kw: Any) -> Any:
        asked.append(" ".join(argv))
        return type("P", (), {"stdout": b"running\n" if len(asked) < 3 else b"degraded\n"})()

    monkeypatch.setattr(kexec, "run", manager)
    monkeypatch.setattr(Step, "run", _killed_jump(m, returncode))
    with pytest.raises(bootflow.JumpFailed, match="gave the boot try of USR-B back"):
        reboot(disk, m)
    assert asked == ["systemctl is-system-running"] * 3
    assert tries_b(disk) == 1 and m.ran[-1] == ["kexec", "-u"]


def test_a_manager_that_answers_late_still_counts(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first question fails (the manager busy with the shutdown it just queued): the next
    answer, ``stopping``, keeps the kernel."""
    answers = iter([subprocess.TimeoutExpired(["systemctl"], 10), b"stopping\n"])

    def manager(argv: list[str], **kw: Any) -> Any:
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return type("P", (), {"stdout": answer})()

    monkeypatch.setattr(kexec, "run", manager)
    monkeypatch.setattr(Step, "run", _killed_jump(m, 1))
    reboot(disk, m)
    assert tries_b(disk) == 0 and ["kexec", "-u"] not in m.ran[2:]


def test_interrupt_during_the_jump_still_undoes(disk: Target, m: Machine) -> None:
    """Ctrl-C while the system keeps running: undone (the manager asked, it says running)."""

    def interrupted(step: Step) -> None:
        m.ran.append(list(step.argv))
        if step.argv == ("systemctl", "kexec"):
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Step, "run", interrupted)
        with pytest.raises(bootflow.JumpFailed, match="gave the boot try"):
            reboot(disk, m)
    assert tries_b(disk) == 1


def test_staged_kernel_is_the_one_whose_hash_is_on_the_command_line(
    disk: Target, m: Machine, tmp_path: Path
) -> None:
    """The ESP's kernel is replaced between planning and loading: kexec still gets the bytes
    the root hash was read from, from /run, never the ESP's path."""
    kernel = tmp_path / "esp" / "flatcar" / "vmlinuz-b"
    m.on_load = lambda: None if kernel.write_bytes(kernel_with_hash("c" * 64)) else None
    report = reboot(disk, m)
    staged = Path(m.loaded[0].kernel)
    assert staged.parent == tmp_path / "stage" and staged != kernel
    assert staged.read_bytes()[0x40 : 0x40 + 64] == HASH_B.encode()
    assert report.plan is not None and f"verity.usrhash={HASH_B}" in report.plan.cmdline


def refuse_loads(monkeypatch: pytest.MonkeyPatch, message: str, cause: str) -> None:
    def refused(image: KexecImage, support: KexecSupport) -> Method:
        raise kexec.LoadFailed(message, cause)

    monkeypatch.setattr(kexec, "load", refused)


def test_load_failure_reboots_through_the_firmware(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_loads(monkeypatch, "kexec_file_load failed (EPERM)", "EPERM")
    report = reboot(disk, m)
    assert report.method is Method.FIRMWARE and report.slot is not None
    assert report.slot.label == "USR-B"
    assert m.ran == [["kexec", "-u"], ["systemctl", "reboot"]]
    assert tries_b(disk) == 1  # GRUB consumes it


@pytest.mark.parametrize("dry_run", [False, True])
def test_firmware_path_refuses_a_slot_grub_would_not_boot(
    disk: Target, m: Machine, dry_run: bool
) -> None:
    with pytest.raises(SlotError, match="GRUB would boot USR-B, not USR-A"):
        reboot(disk, m, via=RebootVia.FIRMWARE, slot="A", dry_run=dry_run)
    assert m.ran == []
    report = reboot(disk, m, via=RebootVia.FIRMWARE, slot="other", dry_run=True)
    assert report.slot is not None and report.slot.label == "USR-B"


def test_kexec_to_a_named_slot_falls_back_only_to_that_slot(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_loads(monkeypatch, "kexec is not possible: kernel.kexec_load_disabled=1", "disabled")
    with pytest.raises(SlotError, match="kexec_load_disabled=1; through the firmware GRUB"):
        reboot(disk, m, slot="booted")
    assert m.ran == [] and tries_b(disk) == 1


def test_undo_never_raises(disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> state.Outcome:
        raise UpdaterError("disk gone")

    m.fail.update({("systemctl", "kexec"), ("kexec", "-u")})
    consumed = slots.Slot(4, "USR-B", state.load(disk).slot(4).partuuid, GOOD)
    monkeypatch.setattr(state, "change", broken)
    said = bootflow._undo(disk, consumed)
    assert said[0].startswith("unloaded") or said[0].startswith("could not unload")
    assert "could not give the boot try of USR-B back (disk gone)" in said[-1]


# --- the family: whatever fails after the load ----------------------------------------------

FAILURES = ["consume-error", "announce-error", "jump-error", "signal-in-load",
            "signal-in-consume", "interrupt-in-jump", "give-back-after-change"]  # fmt: skip


@pytest.mark.parametrize("where", FAILURES)
def test_every_failure_after_the_load_unloads_and_loses_no_try(
    disk: Target, m: Machine, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Wherever the flow stops after the kernel was loaded, the last command is the unload and
    B's try is where it was before the kexec started (never consumed, or given back), unless
    someone else changed B in between, whose change then stands."""
    real_change = state.change
    calls: list[int] = []

    def change(*args: Any, **kwargs: Any) -> state.Outcome:
        calls.append(1)
        if where == "consume-error" and len(calls) == 1:
            raise UpdaterError("write error")
        if where == "signal-in-consume" and len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_change(*args, **kwargs)

    def announce(report: bootflow.Report) -> None:
        if where == "announce-error":
            raise BrokenPipeError(32, "Broken pipe")
        if where == "give-back-after-change":  # someone commits B before the jump fails
            real_change(disk, state.by_slots(slots.mark_good, 4))

    def run(step: Step) -> None:
        m.ran.append(list(step.argv))
        if step.argv == ("systemctl", "kexec"):
            if where == "interrupt-in-jump":
                raise KeyboardInterrupt
            if where in ("jump-error", "give-back-after-change"):
                raise CommandFailed(step.argv, 1, "refused\n")

    if where == "signal-in-load":
        m.on_load = lambda: os.kill(os.getpid(), signal.SIGHUP)
    monkeypatch.setattr(state, "change", change)
    monkeypatch.setattr(Step, "run", run)
    with pytest.raises((UpdaterError, OSError, Interrupted)):
        bootflow.reboot(disk, bootflow.Request(), OK, announce)
    assert m.ran[-1] == ["kexec", "-u"]
    after = state.load(disk).slot(4)
    if where == "give-back-after-change":
        assert (after.tries, after.successful) == (0, True)
    else:
        assert (after.priority, after.tries, after.successful) == (2, 1, False)


STATES = [(1, 0, True), (2, 1, False), (2, 0, False), (0, 0, False), (1, 0, False), (3, 2, True)]


@pytest.mark.parametrize("a", STATES)
@pytest.mark.parametrize("b", STATES)
@pytest.mark.parametrize("spec", ["auto", "A", "B", "booted", "other"])
def test_the_firmware_path_boots_the_named_slot_or_refuses(
    tmp_path: Path, m: Machine, a: tuple[int, int, bool], b: tuple[int, int, bool], spec: str
) -> None:
    image = image_file(tmp_path / f"{a}{b}.img", slots.encode(0, priority=a[0], tries=a[1],
                       successful=a[2]), slots.encode(0, priority=b[0], tries=b[1],
                       successful=b[2]))  # fmt: skip
    t = Target(str(image), 3, None, None, "", BootSettings())
    st = state.load(t)
    request = bootflow.Request(slot=spec, via=RebootVia.FIRMWARE)
    try:
        report = bootflow.reboot(t, request, OK, m.announce)
    except SlotError:
        assert spec != "auto"
        assert st.next is None or st.next.partition != st.resolve(spec).partition
        assert m.ran == []
        return
    assert report.slot == slots.choose_next(st.slots)  # what GRUB will boot
    if spec != "auto":
        assert report.slot is not None and report.slot.partition == st.resolve(spec).partition
    assert m.ran == [["kexec", "-u"], ["systemctl", "reboot"]]

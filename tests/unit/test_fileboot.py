"""The file backend's reboot flow with the commands recorded instead of run: the kernel of the
file the next boot mounts, the fallback to the firmware, the unload after a failed jump."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater import filebackend as fb
from updater import fileboot, kexec
from updater import fileslots as fs
from updater.config import BootSettings, RebootVia
from updater.errors import SlotError
from updater.kexec import KexecSupport, Method
from updater.run import CommandFailed

OK = KexecSupport(tool=True, load_disabled=False, lockdown="none", systemd=True)
HASHES = {fs.ROOT: "11" * 32, fs.NEW: "22" * 32, fs.OLD: "33" * 32}


def make_dir(tmp: Path, *names: str, tries: int | None = None) -> fb.Directory:
    for name in names:
        trailer = fb.Trailer(HASHES[name], 4096, 8192, {fs.ROOT: "1", fs.NEW: "2"}.get(name, "0"))
        (tmp / name).write_bytes(b"\0" * 8192 + trailer.encode())
        fb.write_boot_files(str(tmp), HASHES[name], b"kernel " + name.encode(), b"initrd")
    if tries is not None:
        fb.apply_step(str(tmp), fs.Step("set-tries", value=tries))
    return fb.read(str(tmp))


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    def run(step: kexec.Step) -> None:
        calls.append(step.argv)

    monkeypatch.setattr(kexec.Step, "run", run)
    return calls


def test_the_staged_image_is_what_kexec_loads(tmp_path: Path, ran: list[tuple[str, ...]]) -> None:
    d = make_dir(tmp_path, fs.ROOT, fs.NEW, tries=3)
    seen: list[fileboot.FileReport] = []
    report = fileboot.reboot(d, BootSettings(), "", RebootVia.KEXEC, OK, seen.append)
    kernel, initrd = fb.boot_files(str(tmp_path), HASHES[fs.NEW])
    assert report.plan.image == fs.NEW and report.method is Method.FILE and seen == [report]
    assert ran == [("kexec", "-u"),
                   ("kexec", "-s", "-l", kernel, f"--initrd={initrd}",
                    f"--append={report.plan.cmdline}"),
                   ("systemctl", "kexec")]  # fmt: skip


def test_a_spent_counter_loads_the_old_image(tmp_path: Path, ran: list[tuple[str, ...]]) -> None:
    d = make_dir(tmp_path, fs.ROOT, fs.OLD, tries=0)
    report = fileboot.reboot(d, BootSettings(), "", RebootVia.KEXEC, OK, lambda r: None,
                             dry_run=True)  # fmt: skip
    assert report.plan.root_hash == HASHES[fs.OLD] and ran == []


def test_a_failed_load_reboots_via_firmware(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    calls: list[tuple[str, ...]] = []

    def run(step: kexec.Step) -> None:
        calls.append(step.argv)
        if step.argv[:2] == ("kexec", "-s"):
            raise CommandFailed(list(step.argv), 1, "kexec_file_load failed: Operation not "
                                "permitted")  # fmt: skip

    monkeypatch.setattr(kexec.Step, "run", run)
    d = make_dir(tmp_path, fs.ROOT)
    report = fileboot.reboot(d, BootSettings(), "", RebootVia.KEXEC, OK, lambda r: None)
    assert report.method is Method.FIRMWARE and "EPERM" in (report.reason or "")
    assert calls[-2:] == [("kexec", "-u"), ("systemctl", "reboot")]


@pytest.mark.parametrize(("manager", "unloaded"), [("running", True), ("stopping", False)])
def test_a_failed_jump_unloads_unless_the_system_goes_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: str, unloaded: bool
) -> None:
    """Refused while the system keeps running: the kernel is unloaded. Failed after the shutdown
    was queued (the manager says ``stopping``): the kernel stays for the jump under way."""
    calls: list[tuple[str, ...]] = []

    def run(step: kexec.Step) -> None:
        calls.append(step.argv)
        if step.argv == ("systemctl", "kexec"):
            raise CommandFailed(list(step.argv), 1, "Failed to connect to bus")

    def ask(argv: list[str], **kw: object) -> object:
        calls.append(tuple(argv))
        return type("P", (), {"stdout": manager.encode() + b"\n"})()

    monkeypatch.setattr(kexec.Step, "run", run)
    monkeypatch.setattr(kexec, "run", ask)
    monkeypatch.setattr(kexec, "MANAGER_PAUSE", 0.0)
    d = make_dir(tmp_path, fs.ROOT)
    if unloaded:
        with pytest.raises(CommandFailed):
            fileboot.reboot(d, BootSettings(), "", RebootVia.KEXEC, OK, lambda r: None)
        assert calls[-4:] == [*[("systemctl", "is-system-running")] * 3, ("kexec", "-u")]
    else:
        fileboot.reboot(d, BootSettings(), "", RebootVia.KEXEC, OK, lambda r: None)
        assert calls[-2:] == [("systemctl", "kexec"), ("systemctl", "is-system-running")]


def test_no_kernel_for_the_image_is_refused(tmp_path: Path) -> None:
    d = make_dir(tmp_path, fs.ROOT)
    Path(fb.boot_files(str(tmp_path), HASHES[fs.ROOT])[0]).unlink()
    with pytest.raises(SlotError, match="no kernel for root.img"):
        fileboot.plan(fb.read(str(tmp_path)), BootSettings(), "")
    assert d.next_image is not None


def test_booted_from_reads_the_word_the_file_kexec_writes() -> None:
    line = fileboot.build_cmdline(BootSettings(), "/var/lib/updater/images", "console=ttyS0")
    assert fileboot.booted_from("/var/lib/updater/images", line)
    assert not fileboot.booted_from("/var/lib/updater/img", line)  # a prefix is not the dir
    assert not fileboot.booted_from("/var/lib/updater/images", "mount.usr=PARTUUID=x ro")

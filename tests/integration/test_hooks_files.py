"""Hooks on the file backend, on a real image directory and a served repository: every stage
through the agent's file seam (the real update flow writing ``root-new.img``, a simulated boot
doing the initrd's renames), with its environment; a failing pre-install hook writes nothing; a
failing pre-reboot hook reboots nothing and drops the staged image (the agent's reboot, and the
reboot flow of ``updater reboot``/``kexec``); the first-boot-of-slot hooks run once per promoted
image and their failure fails the agent's health verdict; post-commit after mark-good (the
seam's and ``updater mark-good``'s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import test_hooks_update
from tests.integration.conftest import ROOT as REPO_ROOT
from tests.integration.conftest import need_tools
from tests.integration.repos import Site
from tests.integration.test_agent_files import Machine
from tests.integration.test_hooks_runner import hook
from tests.unit import agentfakes
from tests.unit.agentfakes import FakeClock, FakeLock, FakeReboot, FakeSemaphore
from updater import config, filebackend, fileboot, fileslots
from updater.agent.health import HealthChecks
from updater.agent.record import Reason, Record, State
from updater.agent.seam import Offer
from updater.agent.store import Store
from updater.config import RebootVia
from updater.fileslots import BROKEN, NEW, OLD, ROOT
from updater.hooks import filestages
from updater.hooks.rules import REBOOT_EXIT, Stage
from updater.hooks.runner import HookFailed
from updater.hooks.stages import PreReboot, RebootPending
from updater.kexec import KexecSupport

pytestmark = pytest.mark.integration
squashfs_site = test_hooks_update.squashfs_site  # the fixture: a release that mounts

# Each hook appends its environment to the log, one line: stage slot version booted-slot
# booted-version [partuuid] and whether it has a state directory and a reboot file.
ENV = ('echo "$UPDATER_STAGE $UPDATER_SLOT $UPDATER_VERSION $UPDATER_BOOTED_SLOT '
       '$UPDATER_BOOTED_VERSION [$UPDATER_SLOT_PARTUUID] ${UPDATER_STATE_DIR:+state} '
       '${UPDATER_REBOOT_FILE:+reboot-file}" >> ')  # fmt: skip


class HookedMachine(Machine):
    """``Machine`` (root.img version 1; the repository offers 2) with ``[hooks] dir``."""

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self.hooks = site.tmp / "hooks"
        self.log = site.tmp / "hooks.log"
        self.cfg = config.parse(
            f'[boot]\nbackend = "files"\nimages_dir = "{self.images}"\ntries = 2\n'
            f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
            f'state_dir = "{site.state}"\ntimeout = 1\nretries = 1\n'
            f'[hooks]\ndir = "{self.hooks}"\ntimeout = 20\n', "test.toml",
        )  # fmt: skip
        self.system.cfg = self.cfg

    def logging(self, *stages: Stage) -> None:
        for stage in stages:
            hook(self.hooks, stage, "10-log", ENV + str(self.log))

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def first_boot(self) -> filestages.FirstBoot:
        return filestages.FirstBoot(self.cfg.hooks, self.cfg.update.state_dir, str(self.images),
                                    self.boot_id, None)  # fmt: skip

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.images)): p.read_bytes() if p.is_file() else b""
                for p in sorted(self.images.rglob("*"))}  # fmt: skip


OFFER = Offer("2")


def staged(m: HookedMachine) -> None:
    m.system.stage(OFFER, lambda done, total: None)
    assert m.read().state == fileslots.FileState(frozenset({ROOT, NEW}), tries=2)


def booted_new(m: HookedMachine) -> None:
    staged(m)
    with pytest.raises(FakeReboot):
        m.system.reboot("kexec")
    m.power_on()
    assert m.version(ROOT) == "2" and m.read().state.tries == 1


def drive(site: Site, m: HookedMachine) -> Record:
    """The real agent, restarted after each reboot, with the file seam's first-boot hooks as
    its health check (no other check), until it rests."""
    clock = FakeClock()
    health = HealthChecks(m.cfg.health, clock, m.first_boot())
    return agentfakes.drive(site.tmp, m, FakeLock(FakeSemaphore()), health, clock=clock)


def test_the_agent_runs_every_stage_with_its_environment(squashfs_site: Site) -> None:
    site = squashfs_site
    m = HookedMachine(site)
    m.logging(*Stage)
    seen = site.tmp / "seen"
    hook(m.hooks, Stage.POST_INSTALL, "20-look",
         f'cat "$UPDATER_SLOT_MOUNT/lib/os-release" > {seen}; echo "$UPDATER_SLOT_MOUNT" >> {seen}'
         f'; touch "$UPDATER_SLOT_MOUNT/written" 2>/dev/null && echo writable >> {seen}; exit 0')
    rec = drive(site, m)
    assert rec.state in (State.COMMITTED, State.IDLE) and rec.last_success, rec.last_error
    assert m.reboots == [("kexec", NEW, "2")]
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}))
    assert m.lines() == [
        "pre-install root-new.img 2 root.img 1 [] state ",
        "post-install root-new.img 2 root.img 1 [] state ",
        "pre-reboot root-new.img 2 root.img 1 [] state ",
        "first-boot-of-slot root.img 2 root.img 2 [] state reboot-file",
        "post-commit root.img 2 root.img 2 [] state ",
    ]
    lines = seen.read_text().splitlines()
    # the filesystem alone, read-only (its verity tree and trailer follow it in the file)
    assert lines[:2] == ["ID=flatcar", "VERSION_ID=2"] and "writable" not in lines
    assert not os.path.exists(lines[2]), "unmounted and removed after the hooks"
    assert f" {lines[2]} " not in Path("/proc/self/mountinfo").read_text()


def test_a_failing_pre_install_hook_writes_nothing(site: Site) -> None:
    m = HookedMachine(site)
    hook(m.hooks, Stage.PRE_INSTALL, "10-refuse", "exit 3")
    before = m.snapshot()
    with pytest.raises(HookFailed, match=r"^pre-install hook 10-refuse exited 3; nothing was "
                                         "changed$"):  # fmt: skip
        m.system.stage(OFFER, lambda done, total: None)
    assert m.snapshot() == before
    assert not (m.images / fileslots.PART).exists()


def test_a_failing_post_install_hook_stages_nothing(squashfs_site: Site) -> None:
    m = HookedMachine(squashfs_site)
    hook(m.hooks, Stage.POST_INSTALL, "10-refuse",
         'grep -q VERSION_ID=3 "$UPDATER_SLOT_MOUNT/lib/os-release"')  # fmt: skip
    with pytest.raises(HookFailed, match="post-install hook 10-refuse exited 1; root-new.img.part "
                                         "is not staged: root.img boots as before"):  # fmt: skip
        m.system.stage(OFFER, lambda done, total: None)
    assert m.read().state == fileslots.FileState(frozenset({ROOT}))
    assert fileslots.boots_next(m.read().state) == ROOT
    assert "/updater/hooks/slot-" not in Path("/proc/self/mountinfo").read_text()


def test_a_failing_pre_reboot_hook_reboots_nothing_and_drops_the_staged_image(
    site: Site,
) -> None:
    m = HookedMachine(site)
    staged(m)
    hook(m.hooks, Stage.PRE_REBOOT, "10-refuse", "exit 1")
    with pytest.raises(HookFailed, match=r"^pre-reboot hook 10-refuse exited 1; not rebooted, "
                                         "and root-new.img was dropped"):  # fmt: skip
        m.system.reboot("kexec")
    assert m.reboots == []
    assert m.read().state == fileslots.FileState(frozenset({ROOT}))
    # a reboot now boots root.img as before: no pre-reboot hook is due
    with pytest.raises(FakeReboot):
        m.system.reboot("kexec")
    assert m.reboots == [("kexec", ROOT, "1")]


def test_the_reboot_flow_runs_pre_reboot_hooks_only_into_a_staged_image(site: Site) -> None:
    """``updater reboot``/``kexec``'s flow (``fileboot.reboot``): no kexec-tools, so the firmware
    way, stopped at the announcement in case the hook did not stop it."""
    m = HookedMachine(site)
    staged(m)
    support = KexecSupport(tool=False, load_disabled=False, lockdown="none", systemd=False)
    hooks = PreReboot.of(m.cfg)
    announced: list[str] = []

    def announce(report: fileboot.FileReport) -> None:
        announced.append(report.plan.image)
        raise AssertionError("would reboot")

    m.logging(Stage.PRE_REBOOT)
    dry = fileboot.reboot(m.read(), m.cfg.boot, "", RebootVia.KEXEC, support, announce,
                          dry_run=True, hooks=hooks)  # fmt: skip
    assert dry.hooks == ("10-log",) and m.lines() == [] and dry.plan.image == NEW
    hook(m.hooks, Stage.PRE_REBOOT, "20-refuse", "exit 1")
    with pytest.raises(HookFailed, match="pre-reboot hook 20-refuse exited 1; not rebooted"):
        fileboot.reboot(m.read(), m.cfg.boot, "", RebootVia.KEXEC, support, announce,
                        hooks=hooks)  # fmt: skip
    assert announced == [] and m.lines() == ["pre-reboot root-new.img 2 root.img 1 [] state "]
    assert m.read().state == fileslots.FileState(frozenset({ROOT}))
    # into root.img: none due
    dry = fileboot.reboot(m.read(), m.cfg.boot, "", RebootVia.KEXEC, support, announce,
                          dry_run=True, hooks=hooks)  # fmt: skip
    assert dry.hooks == () and dry.plan.image == ROOT


def test_first_boot_hooks_run_once_per_promoted_image(site: Site) -> None:
    m = HookedMachine(site)
    booted_new(m)
    m.logging(Stage.FIRST_BOOT)
    assert m.first_boot()() is None
    assert m.first_boot()() is None
    m.boot += 1  # a restart in another boot: still once
    assert m.first_boot()() is None
    assert m.lines() == ["first-boot-of-slot root.img 2 root.img 2 [] state reboot-file"]
    ledger = (site.state / "first-boot.json").read_text()
    assert m.read().images[ROOT].trailer.root_hash in ledger  # type: ignore[union-attr]


def test_a_failed_first_boot_fails_the_agents_verdict_and_reverts(site: Site) -> None:
    m = HookedMachine(site)
    hook(m.hooks, Stage.FIRST_BOOT, "10-refuse", "echo no driver; exit 4")
    hook(m.hooks, Stage.POST_COMMIT, "10-never", f"touch {site.tmp / 'committed'}")
    rec = drive(site, m)
    assert rec.rollbacks == 1 and rec.last_success is None
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.HEALTH)]
    assert m.reboots == [("kexec", NEW, "2"), ("kexec", OLD, "1")]
    assert set(m.read().images) == {ROOT, BROKEN} and m.version(ROOT) == "1"
    assert not (site.tmp / "committed").exists()


def test_a_reboot_asked_for_gives_the_image_one_more_try(site: Site) -> None:
    m = HookedMachine(site)
    booted_new(m)
    m.power_on()  # a second boot on trial: its last try
    assert m.read().state.tries == 0
    hook(m.hooks, Stage.FIRST_BOOT, "10-rebuild", f"exit {REBOOT_EXIT}")
    with pytest.raises(RebootPending):
        m.first_boot()()
    assert m.read().state.tries == 1, "this reboot is not the image's last try"
    m.power_on()
    assert m.version(ROOT) == "2" and m.read().state.tries == 0
    assert m.first_boot()() is None  # came back: passed, not run again


def cli(m: HookedMachine, *args: str) -> subprocess.CompletedProcess[str]:
    conf = m.images.parent / "updater.toml"
    hooks = m.hooks
    conf.write_text(
        f'[boot]\nbackend = "files"\nimages_dir = "{m.images}"\ntries = 2\n'
        f'[update]\nstate_dir = "{m.cfg.update.state_dir}"\nrepo = "{m.cfg.update.repo}"\n'
        f'trusted_root = "{m.cfg.update.trusted_root}"\ntimeout = 1\nretries = 1\n'
        f'[hooks]\ndir = "{hooks}"\n'
    )
    exe = REPO_ROOT / ".venv" / "bin" / "updater"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
    return subprocess.run([*argv, "--config", str(conf), *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_mark_good_runs_first_boot_then_post_commit_hooks(site: Site) -> None:
    need_tools("sh")
    m = HookedMachine(site)
    booted_new(m)
    hook(m.hooks, Stage.FIRST_BOOT, "10-refuse", "exit 2")
    proc = cli(m, "mark-good")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "updater: error: not marked good: first-boot-of-slot hook 10-refuse exited 2 (updater "
        "rollback --reboot kexec goes back to the previous image)")  # fmt: skip
    assert m.read().state.tries == 1, "not committed"
    (site.state / "first-boot.json").unlink()  # the operator fixed it and forgets the failure
    (m.hooks / Stage.FIRST_BOOT.directory / "10-refuse").unlink()
    m.logging(Stage.FIRST_BOOT, Stage.POST_COMMIT)
    proc = cli(m, "mark-good")
    assert proc.returncode == 0, proc.stderr
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}))
    assert m.lines() == ["first-boot-of-slot root.img 2 root.img 2 [] state reboot-file",
                         "post-commit root.img 2 root.img 2 [] state "]  # fmt: skip
    proc = cli(m, "mark-good")  # nothing on trial: no hook runs again
    assert proc.returncode == 0, proc.stderr
    assert len(m.lines()) == 2


def test_the_seam_marks_good_then_runs_post_commit(site: Site) -> None:
    m = HookedMachine(site)
    booted_new(m)
    m.logging(Stage.POST_COMMIT)
    m.system.mark_good()
    assert m.lines() == ["post-commit root.img 2 root.img 2 [] state "]
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}))
    assert filebackend.read(str(m.images)).state.tries is None


def test_agent_verify_runs_the_first_boot_hooks_and_fails_on_them(site: Site) -> None:
    """``updater agent verify`` picks the file seam and its first-boot-of-slot hooks."""
    m = HookedMachine(site)
    booted_new(m)
    hook(m.hooks, Stage.FIRST_BOOT, "10-refuse", "echo no driver; exit 4")
    settings = (
        f'[boot]\nbackend = "files"\nimages_dir = "{m.images}"\ntries = 2\n'
        f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
        f'state_dir = "{site.state}"\ntimeout = 1\nretries = 1\n[hooks]\ndir = "{m.hooks}"\n'
    )
    conf = site.tmp / "agent.toml"
    (site.tmp / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    conf.write_text(f'{settings}[agent]\nreboot = "off"\nmachine_id_file = '
                    f'"{site.tmp / "machine-id"}"\nmetrics_file = "{site.tmp / "u.prom"}"\n'
                    f'reboot_required_file = "{site.tmp / "reboot-required"}"\n')  # fmt: skip
    exe = REPO_ROOT / ".venv" / "bin" / "updater"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
    proc = subprocess.run([*argv, "--config", str(conf), "--booted", ROOT, "agent", "verify"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # the verdict: the slot on trial was marked bad
    assert "first-boot-of-slot 10-refuse: no driver" in proc.stderr
    rec = Store(str(site.state)).load()
    assert rec.state is State.ROLLED_BACK and rec.last_error == (
        "health check failed: first-boot-of-slot hook 10-refuse exited 4")  # fmt: skip
    assert [(b.version, b.reason) for b in rec.blocked] == [("2", Reason.HEALTH)]
    # the revert marker: the next boot puts root-old.img back (reboots are off here)
    assert m.read().state == fileslots.FileState(frozenset({ROOT, OLD}), revert=True, tries=1)
    assert "runs no hooks" not in proc.stderr


def test_updater_update_runs_the_install_hooks_on_the_file_backend(site: Site) -> None:
    m = HookedMachine(site)
    hook(m.hooks, Stage.PRE_INSTALL, "10-freeze", "echo frozen; exit 1")
    before = m.snapshot()
    proc = cli(m, "update")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == ("updater: error: pre-install hook 10-freeze exited 1; "
                                            "nothing was changed")  # fmt: skip
    assert m.snapshot() == before
    (m.hooks / Stage.PRE_INSTALL.directory / "10-freeze").unlink()
    m.logging(Stage.PRE_INSTALL)
    proc = cli(m, "update", "--json")
    assert proc.returncode == 0, proc.stderr
    assert m.lines() == ["pre-install root-new.img 2 root.img 1 [] state "]
    assert '{"event":"hooks","hooks":["10-log"],"stage":"pre-install"}' in proc.stdout
    assert m.read().state == fileslots.FileState(frozenset({ROOT, NEW}), tries=2)
    # a dry run names the pre-reboot hooks that would run before booting the staged image
    hook(m.hooks, Stage.PRE_REBOOT, "10-drain", "exit 1")
    proc = cli(m, "kexec", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["image"], doc["pre_reboot_hooks"]) == (NEW, ["10-drain"])
    proc = cli(m, "reboot", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("would run the pre-reboot hooks 10-drain\n"
                                  "would boot root-new.img")  # fmt: skip
    assert m.read().state == fileslots.FileState(frozenset({ROOT, NEW}), tries=2), "ran none"

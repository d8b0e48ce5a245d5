"""Hooks and the pin on an image-file disk, through the real commands and flows: ``updater
update`` against a served repository with a failing pre-install hook (nothing changes on
disk) and with post-install hooks (the new slot is mounted read-only, or stays unbootable); a
failing pre-reboot hook puts the booted slot back on top; the first-boot-of-slot hooks run once
per activation across restarts, keep a failure, and reboot once more when asked; mark-good's
hooks; ``updater pin``/``unpin`` and what update does under a pin."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CgptField, Cli, need_tools
from tests.integration.httprepo import FaultProxy, RepoServer
from tests.integration.repos import Site
from tests.integration.test_hooks_runner import hook
from tests.integration.test_update import A, B, Machine, events, prio_tries_good
from tests.unit.memrepo import MiB, make_image
from updater import inventory, layout, slots, state, target
from updater.config import HooksSettings
from updater.hooks import stages
from updater.hooks.rules import REBOOT_EXIT, Stage
from updater.hooks.runner import HookFailed
from updater.release import parse_version
from updater.repo import publish
from updater.repo.repository import Expiry, Repository, create
from updater.repo.storage import DirStorage

pytestmark = pytest.mark.integration
HASH = "ab" * 32


class HookedMachine(Machine):
    def __init__(self, site: Site, booted: str = "1") -> None:
        super().__init__(site, booted)
        self.hooks = site.tmp / "hooks"
        self.config.write_text(f'[update]\ntimeout = 1\nretries = 1\nstate_dir = "{self.state}"\n'
                               f'[hooks]\ndir = "{self.hooks}"\ntimeout = 20\n')  # fmt: skip

    def cli(self, *args: str, booted: str = "A") -> subprocess.CompletedProcess[str]:
        return Cli()("--config", str(self.config), "--disk", str(self.disk), "--booted", booted,
                     "--esp", str(self.esp), *args, check=False)  # fmt: skip

    def files(self) -> dict[str, bytes]:
        """Everything an update may write, but the verified-metadata cache."""
        out = {"disk": self.disk.read_bytes()}
        for path in sorted(self.esp.rglob("*")):
            out[f"esp/{path.relative_to(self.esp)}"] = path.read_bytes() if path.is_file() else b""
        for path in sorted(self.state.iterdir()):
            if path.is_file() and not path.name.endswith(".lock"):
                out[f"state/{path.name}"] = path.read_bytes()
        return out


def test_a_failing_pre_install_hook_changes_nothing(site: Site) -> None:
    m = HookedMachine(site)
    env = site.tmp / "env"
    hook(m.hooks, Stage.PRE_INSTALL, "10-record", f"env | grep ^UPDATER_ > {env}")
    hook(m.hooks, Stage.PRE_INSTALL, "20-refuse", "echo 'maintenance freeze' >&2; exit 1")
    before = m.files()
    proc = m.update("--json")
    assert proc.returncode == 1
    err = proc.stderr.splitlines()
    assert err[-1] == ("updater: error: pre-install hook 20-refuse exited 1; nothing was "
                       "changed")  # fmt: skip
    assert [line for line in err if "error" in line] == err[-1:]
    assert "updater: pre-install 20-refuse: maintenance freeze" in err
    assert events(proc)[-1] == {"event": "result", "status": "failed", "exit": 1,
                                "error": err[-1].removeprefix("updater: error: ")}  # fmt: skip
    assert m.files() == before, "the disk, the ESP and the state files are untouched"
    assert not (m.state / "slot-write.json").exists()
    assert sorted(env.read_text().splitlines()) == sorted([
        "UPDATER_BOOTED_SLOT=A", "UPDATER_BOOTED_VERSION=1", "UPDATER_REBOOT_FILE=",
        "UPDATER_SLOT_MOUNT=", f"UPDATER_SLOT_PARTUUID={layout.USR_B_UUID}",
        "UPDATER_SLOT=B", "UPDATER_STAGE=pre-install", f"UPDATER_STATE_DIR={m.state}",
        "UPDATER_VERSION=2",
    ])  # fmt: skip


def test_passing_pre_install_hooks_are_reported(site: Site, cgpt_field: CgptField) -> None:
    m = HookedMachine(site)
    hook(m.hooks, Stage.PRE_INSTALL, "10-ok", "exit 0")
    proc = m.update("--json")
    assert proc.returncode == 0, proc.stderr
    assert {"event": "hooks", "stage": "pre-install", "hooks": ["10-ok"]} in events(proc)
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)


def test_post_install_on_an_image_that_cannot_be_mounted_leaves_the_slot_unbootable(
    site: Site, cgpt_field: CgptField
) -> None:
    # The served test images carry only a squashfs superblock: the mount fails, as a post-
    # install stage that cannot give its hooks the slot must.
    m = HookedMachine(site)
    hook(m.hooks, Stage.POST_INSTALL, "10-look", "ls \"$UPDATER_SLOT_MOUNT\"")
    proc = m.update()
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        "updater: error: cannot mount the new slot for the post-install hooks: mount ")
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    assert prio_tries_good(cgpt_field, m.disk, A) == (1, 0, 1)


@pytest.fixture
def squashfs_site(tmp_path: Path) -> Iterator[Site]:
    """A repository whose release 2 is a real squashfs (``lib/os-release`` in it), mountable."""
    need_tools("mksquashfs")
    tree = tmp_path / "usr-tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "os-release").write_text("ID=flatcar\nVERSION_ID=2\n")
    fs = tmp_path / "usr.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(fs), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)  # fmt: skip
    img = make_image(2, fs=fs.read_bytes())
    root = tmp_path / "repo"
    create(DirStorage(root), Expiry())
    publish.add_release(Repository(DirStorage(root)), channel="stable", arch="x86_64",
                        version=parse_version("2"), usr=[img.data], facts=img.facts,
                        kernel=img.kernel, initrd=b"initrd", frame_size=MiB, level=1)  # fmt: skip
    with RepoServer(root) as server, FaultProxy(server.url) as proxy:
        yield Site(root, server, proxy, tmp_path)


def test_post_install_hooks_see_the_new_slot_read_only(
    squashfs_site: Site, cgpt_field: CgptField
) -> None:
    m = HookedMachine(squashfs_site)
    seen = squashfs_site.tmp / "seen"
    hook(m.hooks, Stage.POST_INSTALL, "10-look",
         f'cat "$UPDATER_SLOT_MOUNT/lib/os-release" > {seen}; echo "$UPDATER_SLOT_MOUNT" >> {seen}'
         f'; touch "$UPDATER_SLOT_MOUNT/written" 2>/dev/null && echo writable >> {seen}; exit 0')
    proc = m.update("--json")
    assert proc.returncode == 0, proc.stderr
    lines = seen.read_text().splitlines()
    assert lines[:2] == ["ID=flatcar", "VERSION_ID=2"] and "writable" not in lines
    where = lines[2]
    assert where.startswith(("/run/updater/hooks/slot-", "/tmp/"))
    assert not os.path.exists(where), "unmounted and removed after the hooks"
    assert f" {where} " not in Path("/proc/self/mountinfo").read_text()
    assert {"event": "hooks", "stage": "post-install", "hooks": ["10-look"]} in events(proc)
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)


def test_a_failing_post_install_hook_leaves_the_slot_unbootable(
    squashfs_site: Site, cgpt_field: CgptField
) -> None:
    m = HookedMachine(squashfs_site)
    hook(m.hooks, Stage.POST_INSTALL, "10-refuse",
         'grep -q VERSION_ID=3 "$UPDATER_SLOT_MOUNT/lib/os-release"')  # fmt: skip
    proc = m.update()
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == ("updater: error: post-install hook 10-refuse exited "
                                            "1; USR-B stays unbootable")  # fmt: skip
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    assert prio_tries_good(cgpt_field, m.disk, A) == (1, 0, 1)
    assert "/updater/hooks/slot-" not in Path("/proc/self/mountinfo").read_text()


def booted_target(m: Machine, booted: str) -> target.Target:
    return target.resolve(str(m.disk), booted, esp=str(m.esp))


def test_a_failing_pre_reboot_hook_puts_the_booted_slot_back_on_top(site: Site) -> None:
    m = HookedMachine(site)
    assert m.update().returncode == 0
    t = booted_target(m, "A")
    assert state.load(t).next.partition == B  # type: ignore[union-attr]
    hook(m.hooks, Stage.PRE_REBOOT, "10-drain", 'test "$UPDATER_SLOT" = B && exit 4')
    hooks = stages.PreReboot(HooksSettings(str(m.hooks)), str(m.state))
    st = state.load(t)
    with pytest.raises(HookFailed, match="^pre-reboot hook 10-drain exited 4; not rebooted, and "
                       "USR-A boots next again$"):  # fmt: skip
        stages.before_reboot(hooks, t, st, st.next)
    after = state.load(t)
    assert after.next.partition == A  # type: ignore[union-attr]
    b = after.slot(B)
    assert (b.tries, b.successful) == (1, False), "the new slot keeps its image and its try"
    # a reboot back to a good slot (here: A is next) runs no pre-reboot hook
    assert stages.before_reboot(hooks, t, after, after.next) == ()


def on_trial_in_b(m: Machine) -> target.Target:
    """USR-B activated with release 2 and booted once (its try consumed): the first boot."""
    t = booted_target(m, "A")
    state.change(t, state.by_slots(slots.set_active, B, booted=A))
    state.change(t, lambda st: slots.next_boot(st.slots)[1])
    inventory.record(str(m.state), str(layout.USR_B_UUID), parse_version("2"), HASH)
    return booted_target(m, "B")


def first_boot(m: HookedMachine, t: target.Target, boot_id: str,
               reboots: list[str] | None = None) -> stages.FirstBoot:  # fmt: skip
    reboot = None if reboots is None else (lambda: reboots.append(boot_id))
    return stages.FirstBoot(HooksSettings(str(m.hooks)), str(m.state), lambda: t,
                            lambda: boot_id, reboot)  # fmt: skip


def test_first_boot_hooks_run_once_per_activation_across_restarts(site: Site) -> None:
    need_tools("sgdisk")
    m = HookedMachine(site)
    runs = site.tmp / "runs"
    hook(m.hooks, Stage.FIRST_BOOT, "10-dkms", f'echo "$UPDATER_SLOT $UPDATER_VERSION" >> {runs}')
    t = on_trial_in_b(m)
    assert first_boot(m, t, "boot-1")() is None
    assert first_boot(m, t, "boot-1")() is None  # the agent restarted
    assert first_boot(m, t, "boot-2")() is None  # a later boot
    assert runs.read_text() == "B 2\n"
    ledger = json.loads((m.state / "first-boot.json").read_text())
    assert ledger["slots"][str(layout.USR_B_UUID)]["status"] == "done"
    # the next update rewrites the slot: its next activation is a new first boot
    assert m.update().returncode in (0, 3)
    assert str(layout.USR_B_UUID) not in json.loads(
        (m.state / "first-boot.json").read_text())["slots"]


def test_a_failed_first_boot_stays_failed(site: Site) -> None:
    m = HookedMachine(site)
    runs = site.tmp / "runs"
    hook(m.hooks, Stage.FIRST_BOOT, "10-dkms", f"echo run >> {runs}; exit 2")
    t = on_trial_in_b(m)
    assert first_boot(m, t, "boot-1")() == "first-boot-of-slot hook 10-dkms exited 2"
    assert first_boot(m, t, "boot-1")() == "first-boot-of-slot hook 10-dkms exited 2"
    assert runs.read_text() == "run\n"


def test_a_damaged_ledger_fails_the_first_boot(site: Site) -> None:
    m = HookedMachine(site)
    runs = site.tmp / "runs"
    hook(m.hooks, Stage.FIRST_BOOT, "10-dkms", f"echo run >> {runs}")
    t = on_trial_in_b(m)
    (m.state / "first-boot.json").write_text('{"format": 1, "slots": []}')
    assert first_boot(m, t, "boot-1")() == (
        f"first-boot-of-slot: {m.state}/first-boot.json: not a first-boot ledger of format 1")
    assert not runs.exists()


def test_a_reboot_asked_for_gives_the_slot_one_more_try(site: Site) -> None:
    m = HookedMachine(site)
    runs = site.tmp / "runs"
    hook(m.hooks, Stage.FIRST_BOOT, "10-dkms", f"echo run >> {runs}; exit {REBOOT_EXIT}")
    t = on_trial_in_b(m)
    assert state.load(t).slot(B).tries == 0
    reboots: list[str] = []
    with pytest.raises(stages.RebootPending, match="rebooting USR-B once more"):
        first_boot(m, t, "boot-1", reboots)()
    st = state.load(t)
    assert (st.slot(B).tries, st.slot(B).successful, st.next.partition) == (1, False, B)  # type: ignore[union-attr]
    assert reboots == ["boot-1"]
    with pytest.raises(stages.RebootPending):  # the reboot did not happen: asked again
        first_boot(m, t, "boot-1", reboots)()
    assert first_boot(m, t, "boot-2", reboots)() is None  # came back: done
    assert runs.read_text() == "run\n" and reboots == ["boot-1", "boot-1"]


def test_mark_good_runs_first_boot_then_post_commit_hooks(site: Site) -> None:
    m = HookedMachine(site)
    on_trial_in_b(m)
    hook(m.hooks, Stage.FIRST_BOOT, "10-check", f"test -e {site.tmp}/driver-ok")
    hook(m.hooks, Stage.POST_COMMIT, "10-note", f'echo "$UPDATER_SLOT" > {site.tmp}/committed')
    refused = m.cli("mark-good", booted="B")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        "updater: error: not marked good: first-boot-of-slot hook 10-check exited 1 (updater "
        "rollback --reboot kexec goes back to the previous slot)")
    assert not state.load(booted_target(m, "B")).slot(B).successful
    assert not (site.tmp / "committed").exists()
    # the failure is kept for this activation: fixing the driver does not make it pass
    (site.tmp / "driver-ok").touch()
    assert m.cli("mark-good", booted="B").returncode == 1
    (m.state / "first-boot.json").unlink()  # the operator's way to run them again
    ok = m.cli("mark-good", booted="B")
    assert ok.returncode == 0, ok.stderr
    assert state.load(booted_target(m, "B")).slot(B).successful
    assert (site.tmp / "committed").read_text() == "B\n"


def test_pin_and_unpin(site: Site, cgpt_field: CgptField) -> None:
    m = HookedMachine(site)
    assert m.cli("pin", "1", "--state-dir", str(m.state)).stdout == "pinned to release 1\n"
    status = json.loads(m.cli("status", "--json").stdout)
    assert (status["pin"], status["pin_error"]) == ("1", None)
    held = m.update()
    assert held.returncode == 3 and "already running release 1" in held.stdout
    assert "pinned to release 1" in held.stderr
    refused = m.update("--version", "2")
    assert refused.returncode == 1 and refused.stderr.splitlines()[-1] == (
        "updater: error: this machine is pinned to release 1: --version 2 refused (pass "
        "--override-pin to install it anyway, or run updater unpin)")
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    assert m.update("--override-pin").returncode == 2
    forced = m.update("--version", "2", "--override-pin")
    assert forced.returncode == 0, forced.stderr
    unpin = m.cli("unpin", "--state-dir", str(m.state), "--json")
    assert json.loads(unpin.stdout) == {"pin": None, "previous": "1"}
    assert json.loads(m.cli("status", "--json").stdout)["pin"] is None
    assert m.cli("unpin", "--state-dir", str(m.state)).stdout == "no pin was set\n"


def test_a_damaged_pin_stops_update(site: Site, cgpt_field: CgptField) -> None:
    m = HookedMachine(site)
    m.state.mkdir(parents=True, exist_ok=True)
    (m.state / "pin.json").write_bytes(b'{"format": 1, "version": "1.x"}')
    proc = m.update()
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(f"updater: error: {m.state}/pin.json: version: ")
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    status = json.loads(m.cli("status", "--json").stdout)
    assert status["pin"] is None and status["pin_error"].startswith(f"{m.state}/pin.json")

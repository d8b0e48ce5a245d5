"""The pre-reboot hooks in the operator's reboot commands (``updater kexec``, ``reboot``,
``rollback --reboot``, ``kexec --prepare``), on the real disk image of the kexec tests with
fake kexec and systemctl: the hook runs once, with its documented environment, before the
kernel is loaded; a failing one reboots nothing and puts the booted slot back on top; a reboot
back to a good slot and a dry run run none; a prepared boot is not hooked twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration import test_kexec_commands as kc
from tests.integration.conftest import CgptField, need_tools, sha
from tests.integration.repos import Site
from tests.integration.test_hooks_runner import hook
from tests.integration.test_hooks_update import HookedMachine
from updater import inventory, state, target
from updater.hooks.rules import Stage
from updater.kexec import KexecSupport
from updater.release import parse_version

pytestmark = pytest.mark.integration

# The disk image with an ESP holding both slots' kernels, the fake tools (their log is the
# fixture's value) and /run redirected, from the kexec command tests.
boot_disk = kc.boot_disk
fakes = kc.fakes
run_dir = kc.run_dir
A, B = 3, 4


class Machine:
    """The boot disk with a configuration naming a hook directory and a state directory."""

    def __init__(self, disk: Path, log: Path, tmp: Path,
                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
        self.disk, self.log, self.capsys = str(disk), log, capsys
        self.hooks, self.state = tmp / "hooks", tmp / "state"
        self.state.mkdir()
        self.config = tmp / "updater.toml"
        self.config.write_text(f'[update]\nstate_dir = "{self.state}"\n'
                               f'[hooks]\ndir = "{self.hooks}"\ntimeout = 20\n')  # fmt: skip
        self.env = tmp / "hook-env"

    def cli(self, *args: str, booted: str = "A") -> tuple[int, str, str]:
        return kc.run_cli(["--config", str(self.config), "--disk", self.disk, "--booted", booted,
                           *args], self.capsys)  # fmt: skip

    def record_hook(self, exit_status: int = 0) -> None:
        """A pre-reboot hook that logs itself among the fake tools' commands (so that the order
        shows) and keeps its UPDATER_ variables."""
        hook(self.hooks, Stage.PRE_REBOOT, "10-drain",
             f'env | grep ^UPDATER_ | sort > {self.env}; echo "hook $UPDATER_SLOT" >> {self.log}; '
             f"exit {exit_status}")  # fmt: skip

    def hook_runs(self) -> int:
        return sum(1 for c in kc.logged(self.log) if c[0] == "hook")

    def b_on_trial(self, tries: int = 1) -> None:
        """USR-B activated with release 2 next to the booted USR-A of release 1."""
        assert self.cli("set-active", "B", "--tries", str(tries))[0] == 0
        st = state.load(target.resolve(self.disk))
        inventory.record(str(self.state), str(st.slot(A).partuuid), parse_version("1"))
        inventory.record(str(self.state), str(st.slot(B).partuuid), parse_version("2"))


@pytest.fixture
def m(boot_disk: Path, fakes: Path, run_dir: Path, fast_tmp: Path,
      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Machine:  # fmt: skip
    kc.use(monkeypatch, kc.OK)
    return Machine(boot_disk, fakes, fast_tmp, capsys)


def prio_tries_good(cgpt_field: CgptField, disk: str, part: int) -> tuple[int, int, int]:
    return tuple(cgpt_field(Path(disk), part, f) for f in "PTS")  # type: ignore[return-value]


def test_kexec_into_a_new_slot_runs_the_hook_once_before_the_load(
    m: Machine, fast_tmp: Path, cgpt_field: CgptField
) -> None:
    m.b_on_trial()
    m.record_hook()
    code, out, err = m.cli("kexec", "--json")
    assert code == 0, err
    assert json.loads(out)["pre_reboot_hooks"] == ["10-drain"]
    calls = kc.logged(m.log)
    assert calls[0] == ["hook", "B"] and calls[1] == ["kexec", "-u"], calls
    assert calls[-1] == ["systemctl", "kexec"] and m.hook_runs() == 1
    uuid_b = state.load(target.resolve(m.disk)).slot(B).partuuid
    assert m.env.read_text().splitlines() == [  # README, "Hooks": every variable, always set
        "UPDATER_BOOTED_SLOT=A", "UPDATER_BOOTED_VERSION=1", "UPDATER_REBOOT_FILE=",
        "UPDATER_SLOT=B", "UPDATER_SLOT_MOUNT=", f"UPDATER_SLOT_PARTUUID={uuid_b}",
        "UPDATER_STAGE=pre-reboot", f"UPDATER_STATE_DIR={m.state}", "UPDATER_VERSION=2",
    ]  # fmt: skip
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 0, 0)  # the try consumed after it


def test_a_failed_load_falls_back_to_the_firmware_without_a_second_run(m: Machine) -> None:
    m.b_on_trial()
    m.record_hook()
    kc.fake_settings(m.log, FAKE_FAIL_S="kexec_file_load failed: Operation not permitted")
    code, _, err = m.cli("reboot")
    assert code == 0, err
    assert kc.logged(m.log)[-1] == ["systemctl", "reboot"] and m.hook_runs() == 1


def test_a_firmware_reboot_runs_the_hook_before_it(m: Machine) -> None:
    m.b_on_trial()
    m.record_hook()
    assert m.cli("reboot", "--via", "firmware")[0] == 0
    assert kc.logged(m.log) == [["hook", "B"], ["kexec", "-u"], ["systemctl", "reboot"]]


@pytest.mark.parametrize(
    "command",
    [["kexec"], ["reboot", "--via", "firmware"], ["kexec", "--prepare"], ["kexec", "--force"]],
)
def test_a_failing_hook_reboots_nothing_and_puts_the_booted_slot_back_on_top(
    m: Machine, run_dir: Path, cgpt_field: CgptField, command: list[str]
) -> None:
    m.b_on_trial()
    m.record_hook(exit_status=4)
    code, _, err = m.cli(*command)
    assert code == 1
    lines = err.splitlines()
    assert lines[-1] == ("updater: error: pre-reboot hook 10-drain exited 4; not rebooted, and "
                         "USR-A boots next again")  # fmt: skip
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert kc.logged(m.log) == [["hook", "B"]], "no unload, no load, no reboot"
    assert not (run_dir / "kexec-prepared.json").exists()
    a, b = prio_tries_good(cgpt_field, m.disk, A), prio_tries_good(cgpt_field, m.disk, B)
    assert a[0] > b[0] and a[2] == 1, "the booted slot boots next again"
    assert b[1:] == (1, 0), "the new slot keeps its try and stays on trial"


def test_a_reboot_into_a_good_slot_runs_no_hook(m: Machine) -> None:
    m.record_hook()
    assert m.cli("kexec")[0] == 0  # the booted, good USR-A is next
    assert m.cli("set-active", "B")[0] == 0 and m.cli("mark-good", booted="B")[0] == 0
    assert m.cli("kexec", booted="B")[0] == 0  # USR-B, good now, is booted and next
    code, _, err = m.cli("kexec", "--slot", "A", booted="B")  # into the other good slot
    assert code == 0, err
    assert m.hook_runs() == 0 and not m.env.exists()
    assert kc.logged(m.log)[-1] == ["systemctl", "kexec"]


@pytest.mark.parametrize("via", ["kexec", "firmware"])
def test_a_rollback_reboot_to_a_good_slot_runs_no_hook(
    m: Machine, cgpt_field: CgptField, via: str
) -> None:
    assert m.cli("set-active", "B")[0] == 0
    assert m.cli("mark-good", booted="B")[0] == 0
    m.record_hook()
    # USR-A's test image holds no filesystem, hence --force; it is marked good all the same.
    code, _, err = m.cli("rollback", "--force", "--reboot", via, booted="B")
    assert code == 0, err
    assert m.hook_runs() == 0 and not m.env.exists()
    assert kc.logged(m.log)[-1] == ["systemctl", via if via == "kexec" else "reboot"]
    assert cgpt_field(Path(m.disk), A, "P") > cgpt_field(Path(m.disk), B, "P")


def test_a_forced_rollback_into_a_never_good_slot_runs_the_hook(
    m: Machine, cgpt_field: CgptField
) -> None:
    """USR-B never booted: --force gives it one try, a reboot into a new slot like any other."""
    m.record_hook(exit_status=4)
    code, _, err = m.cli("rollback", "--force", "--reboot", "kexec")
    assert code == 1 and err.splitlines()[-1].endswith("USR-A boots next again")
    assert kc.logged(m.log) == [["hook", "B"]]
    assert cgpt_field(Path(m.disk), A, "P") > cgpt_field(Path(m.disk), B, "P")


@pytest.mark.parametrize("via", ["kexec", "firmware"])
def test_a_dry_run_runs_no_hook_and_names_them(m: Machine, via: str) -> None:
    m.b_on_trial()
    m.record_hook()
    hook(m.hooks, Stage.PRE_REBOOT, "20-notify", "exit 0")
    before = sha(Path(m.disk))
    code, out, _ = m.cli("reboot", "--via", via, "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "would run the pre-reboot hooks 10-drain, 20-notify"
    code, out, _ = m.cli("reboot", "--via", via, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["pre_reboot_hooks"] == ["10-drain", "20-notify"]
    assert kc.logged(m.log) == [] and not m.env.exists() and sha(Path(m.disk)) == before


def test_a_prepared_boot_runs_the_hook_at_preparation_and_not_again(
    m: Machine, run_dir: Path, cgpt_field: CgptField
) -> None:
    m.b_on_trial(tries=2)
    m.record_hook()
    code, out, err = m.cli("kexec", "--prepare", "--json")
    assert code == 0, err
    assert json.loads(out)["pre_reboot_hooks"] == ["10-drain"]
    assert [c[:2] for c in kc.logged(m.log)] == [["hook", "B"], ["kexec", "-u"], ["kexec", "-s"]]
    # the shutdown unit counts the try and runs no hook
    kc.loaded(run_dir, True)
    assert kc.run_cli(["--config", str(m.config), "--disk", m.disk, "kexec",
                       "--consume-prepared"], m.capsys)[0] == 0  # fmt: skip
    assert m.hook_runs() == 1 and cgpt_field(Path(m.disk), B, "T") == 1


def test_reboot_after_a_preparation_runs_the_hook_once(
    m: Machine, run_dir: Path, cgpt_field: CgptField
) -> None:
    """``update --prepare-kexec`` (the same preparation), then ``updater reboot``."""
    m.b_on_trial(tries=2)
    m.record_hook()
    assert m.cli("kexec", "--prepare")[0] == 0
    code, _, err = m.cli("reboot")
    assert code == 0, err
    assert "the pre-reboot hooks ran when the boot of USR-B was prepared: not again" in err
    assert m.hook_runs() == 1 and kc.logged(m.log)[-1] == ["systemctl", "kexec"]
    assert cgpt_field(Path(m.disk), B, "T") == 1
    # A new activation after a preparation is a new reboot: its hooks run again.
    assert m.cli("kexec", "--prepare")[0] == 0
    assert m.hook_runs() == 2
    m.b_on_trial(tries=3)
    assert m.cli("reboot")[0] == 0
    assert m.hook_runs() == 3


def test_a_rollback_dry_run_says_whether_hooks_would_run(m: Machine) -> None:
    m.record_hook()
    before = sha(Path(m.disk))
    code, out, _ = m.cli("rollback", "--force", "--reboot", "kexec", "--dry-run")
    assert code == 0  # from USR-A into USR-B, which never booted
    assert out.splitlines()[-1] == ("would reboot into USR-B; would run the pre-reboot hooks "
                                    "10-drain")  # fmt: skip
    assert sha(Path(m.disk)) == before
    assert m.cli("set-active", "B")[0] == 0 and m.cli("mark-good", booted="B")[0] == 0
    before = sha(Path(m.disk))
    code, out, _ = m.cli("rollback", "--force", "--reboot", "kexec", "--dry-run", booted="B")
    assert code == 0 and out.splitlines()[-1] == "would reboot into USR-A"  # a good slot
    assert kc.logged(m.log) == [] and not m.env.exists() and sha(Path(m.disk)) == before


def test_update_prepare_kexec_then_reboot_runs_the_hook_once(
    site: Site, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    """The update activates release 2 in USR-B and prepares its kexec, which runs the hook;
    the operator's ``updater reboot`` later enters it without running the hook again."""
    need_tools("mkfs.ext4", "debugfs")
    kc.use(monkeypatch, kc.OK)
    u = HookedMachine(site)
    kc.make_oem(u.disk, site.tmp, b'set oem_id="qemu"\n')  # what the boot plan reads
    hook(u.hooks, Stage.PRE_REBOOT, "10-drain",
         f'echo "hook $UPDATER_SLOT $UPDATER_VERSION" >> {fakes}')  # fmt: skip
    base = ["--config", str(u.config), "--disk", str(u.disk), "--booted", "A", "--esp",
            str(u.esp)]  # fmt: skip
    code, _, err = kc.run_cli([*base, "update", "--repo", site.proxy.url, "--trusted-root",
                               str(site.trusted_root), "--prepare-kexec"], capsys)  # fmt: skip
    assert code == 0, err
    calls = kc.logged(fakes)
    assert [c[:2] for c in calls] == [["hook", "B"], ["kexec", "-u"], ["kexec", "-s"]], err
    assert calls[0] == ["hook", "B", "2"] and (run_dir / "kexec-prepared.json").is_file()
    code, _, err = kc.run_cli([*base, "reboot"], capsys)
    assert code == 0, err
    assert [c for c in kc.logged(fakes) if c[0] == "hook"] == [["hook", "B", "2"]]
    assert kc.logged(fakes)[-1] == ["systemctl", "kexec"] and cgpt_field(u.disk, B, "T") == 0


def test_where_kexec_is_impossible_the_preparation_runs_no_hook_and_the_reboot_does(
    m: Machine, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kc.use(monkeypatch, KexecSupport(tool=True, load_disabled=True, lockdown="none",
                                     systemd=True))  # fmt: skip
    m.b_on_trial()
    m.record_hook()
    code, _, err = m.cli("kexec", "--prepare")
    assert code == 1 and "kernel.kexec_load_disabled=1" in err.splitlines()[-1]
    assert m.hook_runs() == 0 and not (run_dir / "kexec-prepared.json").exists()
    assert m.cli("reboot")[0] == 0
    assert kc.logged(m.log) == [["hook", "B"], ["kexec", "-u"], ["systemctl", "reboot"]]

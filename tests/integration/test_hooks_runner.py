"""Hooks as real executables: order, environment, output to the journal (stderr), a failing
hook stopping its stage, a hung hook killed with everything it started, files that are not
hooks, and the reboot request of a first-boot-of-slot hook."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from updater.config import HooksSettings
from updater.hooks import runner
from updater.hooks.rules import REBOOT_EXIT, Context, Stage

pytestmark = pytest.mark.integration


def hook(root: Path, stage: Stage, name: str, body: str, mode: int = 0o755) -> Path:
    folder = root / stage.directory
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def settings(root: Path, timeout: float = 30) -> HooksSettings:
    return HooksSettings(dir=str(root), timeout=timeout)


def test_hooks_run_in_order_with_their_environment_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPDATER_LEAK_CHECK", "must not reach a hook")
    log = tmp_path / "log"
    for name in ("20-second", "10-first", "9-third"):
        hook(tmp_path, Stage.POST_INSTALL, name,
             f'echo "$(basename "$0") $UPDATER_STAGE" >> {log}; echo "out of $(basename "$0")"'
             f'; echo "err of $(basename "$0")" >&2')  # fmt: skip
    hook(tmp_path, Stage.POST_INSTALL, "99-env", f"env > {tmp_path}/env; pwd > {tmp_path}/cwd")
    ctx = Context(Stage.POST_INSTALL, "2", "B", "e03dd35c-7c2d-4a47-b3fe-27f15780a57c", "A", "1",
                  mount="/run/x", state_dir="/var/lib/updater")  # fmt: skip
    verdict = runner.run_stage(settings(tmp_path), ctx)
    assert verdict.ok and verdict.ran == ("10-first", "20-second", "9-third", "99-env")
    assert log.read_text().splitlines() == ["10-first post-install", "20-second post-install",
                                            "9-third post-install"]  # fmt: skip
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert {k: v for k, v in env.items() if k.startswith("UPDATER_")} == {
        "UPDATER_STAGE": "post-install", "UPDATER_VERSION": "2", "UPDATER_SLOT": "B",
        "UPDATER_SLOT_PARTUUID": "e03dd35c-7c2d-4a47-b3fe-27f15780a57c",
        "UPDATER_BOOTED_SLOT": "A", "UPDATER_BOOTED_VERSION": "1", "UPDATER_SLOT_MOUNT": "/run/x",
        "UPDATER_REBOOT_FILE": "", "UPDATER_STATE_DIR": "/var/lib/updater",
    }  # fmt: skip
    assert env["LANG"] == "C.UTF-8" and "/usr/sbin" in env["PATH"]
    assert (tmp_path / "cwd").read_text().strip() == "/"
    err = capfd.readouterr().err.splitlines()
    assert "updater: post-install 10-first: out of 10-first" in err
    assert "updater: post-install 10-first: err of 10-first" in err


def test_a_failing_hook_stops_its_stage(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(tmp_path, Stage.PRE_INSTALL, "10-ok", f"echo 10 >> {ran}")
    hook(tmp_path, Stage.PRE_INSTALL, "20-refuse", "echo 'battery low' >&2; exit 3")
    hook(tmp_path, Stage.PRE_INSTALL, "30-never", f"echo 30 >> {ran}")
    verdict = runner.run_stage(settings(tmp_path), Context(Stage.PRE_INSTALL))
    assert verdict.failure == "pre-install hook 20-refuse exited 3"
    assert verdict.ran == ("10-ok", "20-refuse") and ran.read_text() == "10\n"
    with pytest.raises(runner.HookFailed, match=r"^pre-install hook 20-refuse exited 3; nothing"):
        runner.require(settings(tmp_path), Context(Stage.PRE_INSTALL), what="nothing changed")


def _gone(pid: int) -> bool:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if status == "Z":  # killed, waiting for its (new) parent to reap it
            return True
        time.sleep(0.05)
    return False


def test_a_hung_hook_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook(tmp_path, Stage.PRE_REBOOT, "10-hang",
         f"sleep 300 & echo $! > {pids}; echo waiting; wait")  # fmt: skip
    hook(tmp_path, Stage.PRE_REBOOT, "20-never", f"touch {tmp_path}/never")
    verdict = runner.run_stage(settings(tmp_path, timeout=1), Context(Stage.PRE_REBOOT))
    assert verdict.failure == "pre-reboot hook 10-hang did not finish within 1 s (killed)"
    assert _gone(int(pids.read_text())), "the hook's background child was killed too"
    assert not (tmp_path / "never").exists()


def test_files_that_are_not_hooks(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ran = tmp_path / "ran"
    hook(tmp_path, Stage.POST_COMMIT, "10-plain", f"echo plain >> {ran}", mode=0o644)
    hook(tmp_path, Stage.POST_COMMIT, "20-x.dpkg-old", f"echo old >> {ran}")
    hook(tmp_path, Stage.POST_COMMIT, ".30-hidden", f"echo hidden >> {ran}")
    (tmp_path / Stage.POST_COMMIT.directory / "40-dir").mkdir()
    hook(tmp_path, Stage.POST_COMMIT, "50-ok", f"echo ok >> {ran}")
    verdict = runner.run_stage(settings(tmp_path), Context(Stage.POST_COMMIT))
    assert verdict.ok and verdict.ran == ("50-ok",) and ran.read_text() == "ok\n"
    err = capfd.readouterr().err
    assert "10-plain (not an executable file)" in err and "40-dir (not an executable file)" in err
    assert "20-x.dpkg-old (its name is not a hook's)" in err
    script = tmp_path / Stage.POST_COMMIT.directory / "60-no-interpreter"
    script.write_text("echo no #! line\n")
    script.chmod(0o755)
    verdict = runner.run_stage(settings(tmp_path), Context(Stage.POST_COMMIT))
    assert verdict.failure == "post-commit hook 60-no-interpreter could not run: Exec format error"


def test_a_missing_directory_runs_nothing(tmp_path: Path) -> None:
    assert runner.run_stage(settings(tmp_path / "none"), Context(Stage.PRE_INSTALL)).ran == ()


def test_a_first_boot_hook_asks_for_a_reboot(tmp_path: Path) -> None:
    flag = tmp_path / "reboot-please"
    ctx = Context(Stage.FIRST_BOOT, reboot_file=str(flag))
    hook(tmp_path, Stage.FIRST_BOOT, "10-file", 'touch "$UPDATER_REBOOT_FILE"')
    by_file = runner.run_stage(settings(tmp_path), ctx)
    assert by_file.ok and by_file.reboot
    flag.unlink()
    (tmp_path / Stage.FIRST_BOOT.directory / "10-file").unlink()
    hook(tmp_path, Stage.FIRST_BOOT, "10-exit", f"exit {REBOOT_EXIT}")
    hook(tmp_path, Stage.FIRST_BOOT, "20-after", f"touch {tmp_path}/after")
    by_exit = runner.run_stage(settings(tmp_path), ctx)
    assert by_exit.ok and by_exit.reboot and (tmp_path / "after").exists()

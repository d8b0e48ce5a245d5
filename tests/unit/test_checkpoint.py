"""Checkpoints across a kexec with CRIU faked: the manifest and its checks, the commands, a
failed dump that puts back what it dumped and stops the kexec before any try is consumed, a
failed jump that restores the trees, and the restore after the boot (once, never in the boot
that dumped)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from updater import bootflow
from updater.config import CheckpointSettings
from updater.errors import DataError
from updater.quiesce import checkpoint, criu
from updater.quiesce.checkpoint import Manifest, Tree
from updater.run import CommandFailed
from updater.target import Target

from .test_bootflow import Machine, disk, m, reboot, tries_b  # noqa: F401

BOOT_1 = "0f6b5d33-8a1c-4b57-9a43-8b6a6c1d7a01"
BOOT_2 = "6d1c2a9e-1e44-4f0a-a7b3-2f0d2b7c9e02"


def test_manifest_round_trip() -> None:
    m1 = Manifest(BOOT_1, 1700000000.25, (Tree("pidfile:/run/a.pid", 1234, "0"),
                                          Tree("unit:db.service", 99, "1")))  # fmt: skip
    assert checkpoint.decode(m1.encode(), "m") == m1
    assert json.loads(m1.encode())["format"] == 1


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"format": 2}, "not a format 1"),
        ({"format": 1, "boot_id": "x", "dumped_at": 1, "trees": []}, "boot_id"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": True, "trees": []}, "dumped_at"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": 1.0, "trees": []}, "1 to 64"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": 1.0,
          "trees": [{"name": "pidfile:/a", "pid": 1, "images": "0"}]}, "bad pid"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": 1.0,
          "trees": [{"name": "pidfile:/a", "pid": 7, "images": "../etc"}]}, "images"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": 1.0,
          "trees": [{"name": "exec:rm", "pid": 7, "images": "0"}]}, "bad tree name"),
        ({"format": 1, "boot_id": BOOT_1, "dumped_at": 1.0,
          "trees": [{"name": "unit:a.service", "pid": 7, "images": "0"},
                    {"name": "unit:b.service", "pid": 8, "images": "0"}]}, "share"),
    ],
)  # fmt: skip
def test_a_bad_manifest_is_one_data_error(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(DataError, match=why):
        checkpoint.decode(json.dumps(doc).encode(), "m")


def test_oversized_and_non_json_manifests() -> None:
    with pytest.raises(DataError, match="more than"):
        checkpoint.decode(b" " * (checkpoint.MAX_MANIFEST_BYTES + 1), "m")
    with pytest.raises(DataError, match="not JSON"):
        checkpoint.decode(b"\xff{", "m")


def test_commands() -> None:
    s = CheckpointSettings()
    # criu(8): --tree/-t PID, --images-dir/-D, --shell-job/-j, --restore-detached/-d.
    assert checkpoint.dump_argv(42, "/d/0", s) == (
        "criu", "dump", "--tree", "42", "--images-dir", "/d/0", "--log-file", "dump.log",
        "-v2", "--shell-job")  # fmt: skip
    assert checkpoint.restore_argv("/d/0", CheckpointSettings(shell_job=False)) == (
        "criu", "restore", "--images-dir", "/d/0", "--log-file", "restore.log", "-v2",
        "--restore-detached")  # fmt: skip


def test_pid_files_are_checked() -> None:
    assert checkpoint.parse_pid("1234\n", "f") == 1234
    for bad in ("", "1", "12a", "-5", "123456789"):
        with pytest.raises(DataError):
            checkpoint.parse_pid(bad, "f")


class Criu:
    """A fake ``run`` for the criu adapter: ``fail`` maps a pid (dump) or an images directory
    (restore) to CRIU's last log line."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: list[tuple[str, ...]] = []
        self.fail: dict[str, str] = {}
        monkeypatch.setattr(criu, "run", self.run)

    def run(self, argv: Sequence[str], **_: Any) -> None:
        self.ran.append(tuple(argv))
        key = argv[3] if argv[1] == "dump" else Path(argv[3]).name
        images = Path(argv[5] if argv[1] == "dump" else argv[3])
        if key in self.fail:
            (images / f"{argv[1]}.log").write_text(f"(00.1) Error (criu/cr-{argv[1]}.c:1): "
                                                   f"{self.fail[key]}\n")  # fmt: skip
            raise CommandFailed(argv, 1, "")


@pytest.fixture
def fake_criu(monkeypatch: pytest.MonkeyPatch) -> Criu:
    return Criu(monkeypatch)


def settings_for(tmp_path: Path, *pids: int) -> CheckpointSettings:
    files = []
    for i, pid in enumerate(pids):
        f = tmp_path / f"w{i}.pid"
        f.write_text(f"{pid}\n")
        files.append(str(f))
    return CheckpointSettings(pidfiles=tuple(files), dir=str(tmp_path / "ckpt"))


def test_nothing_selected_dumps_nothing(tmp_path: Path, fake_criu: Criu) -> None:
    assert criu.dump(CheckpointSettings(dir=str(tmp_path))) is None
    assert fake_criu.ran == []


@pytest.fixture
def other() -> Iterator[int]:
    """A second live process the test owns (the test's parent may be pid 1 under a service
    manager or nohup, and pid 1 is refused as a workload)."""
    pid = os.fork()
    if pid == 0:  # the child only waits to be killed
        signal.pause()
        os._exit(0)
    yield pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_dump_writes_the_manifest_last(tmp_path: Path, fake_criu: Criu, other: int) -> None:
    me, parent = os.getpid(), other
    s = settings_for(tmp_path, me, parent)
    got = criu.dump(s, clock=lambda: 1000.0, boot=BOOT_1)
    assert got is not None and [t.pid for t in got.trees] == [me, parent]
    on_disk = checkpoint.decode((tmp_path / "ckpt/manifest.json").read_bytes(), "m")
    assert on_disk == got and on_disk.dumped_at == 1000.0
    assert [a[1] for a in fake_criu.ran] == ["dump", "dump"]


def test_failed_dump_puts_the_dumped_trees_back(
    tmp_path: Path, fake_criu: Criu, other: int
) -> None:
    me, parent = os.getpid(), other
    fake_criu.fail[str(parent)] = "Can't dump ghost file of 4096 bytes"
    s = settings_for(tmp_path, me, parent)
    with pytest.raises(criu.CheckpointFailed, match="criu dump of pidfile:.*w1.pid .*ghost file"):
        criu.dump(s, boot=BOOT_1)
    assert [a[:2] for a in fake_criu.ran] == [("criu", "dump"), ("criu", "dump"),
                                              ("criu", "restore")]  # fmt: skip
    assert fake_criu.ran[2][3].endswith("ckpt/0")  # the first tree runs again
    assert not (tmp_path / "ckpt/manifest.json").exists()


def test_a_dead_process_is_refused_before_any_dump(tmp_path: Path, fake_criu: Criu) -> None:
    s = settings_for(tmp_path, 4194303)  # above any pid_max default: no such process
    with pytest.raises(criu.CheckpointFailed, match="process 4194303 is not running"):
        criu.dump(s, boot=BOOT_1)
    assert fake_criu.ran == []


def test_an_unrestored_checkpoint_blocks_a_new_one(tmp_path: Path, fake_criu: Criu) -> None:
    s = settings_for(tmp_path, os.getpid())
    criu.dump(s, boot=BOOT_1)
    with pytest.raises(criu.CheckpointFailed, match="never restored"):
        criu.dump(s, boot=BOOT_1)


def test_restore_once_after_the_boot(tmp_path: Path, fake_criu: Criu) -> None:
    s = settings_for(tmp_path, os.getpid())
    criu.dump(s, clock=lambda: 1000.0, boot=BOOT_1)
    with pytest.raises(criu.CheckpointFailed, match="written in this boot"):
        criu.restore(s, boot=BOOT_1)
    done = criu.restore(s, clock=lambda: 1012.5, boot=BOOT_2)
    assert done is not None and done.failed == () and done.downtime == 12.5
    assert fake_criu.ran[-1][:2] == ("criu", "restore")
    assert list((tmp_path / "ckpt").iterdir()) == []  # images and manifest gone
    assert criu.restore(s, boot=BOOT_2) is None  # done once


def test_a_failed_restore_is_not_retried(tmp_path: Path, fake_criu: Criu) -> None:
    s = settings_for(tmp_path, os.getpid())
    criu.dump(s, boot=BOOT_1)
    fake_criu.fail["0"] = "Can't fork for 1234: File exists"
    done = criu.restore(s, boot=BOOT_2)
    assert done is not None and "File exists" in done.failed[0]
    assert (tmp_path / "ckpt/manifest.restoring.json").is_file()  # kept for inspection
    assert criu.restore(s, boot=BOOT_2) is None


# ------------------------------------------------------------------ within the reboot flow


def test_failed_dump_means_no_kexec(disk: Target, m: Machine, tmp_path: Path,  # noqa: F811
                                    fake_criu: Criu) -> None:  # fmt: skip
    s = settings_for(tmp_path, os.getpid())
    fake_criu.fail[str(os.getpid())] = "Connected TCP socket, consider using --tcp-established"
    with pytest.raises(criu.CheckpointFailed) as caught:
        reboot(disk, m, checkpoint=s)
    assert "not rebooting, the workload keeps running" in caught.value.message
    assert "\n" not in caught.value.message
    assert tries_b(disk) == 1  # no try consumed
    assert m.ran[-1] == ["kexec", "-u"] and ["<announce>"] not in m.ran


def test_dump_comes_before_the_try_and_a_failed_jump_restores(
    disk: Target, m: Machine, tmp_path: Path, fake_criu: Criu  # noqa: F811
) -> None:
    s = settings_for(tmp_path, os.getpid())
    m.fail.add(("systemctl", "kexec"))
    with pytest.raises(bootflow.JumpFailed, match="restored 1 checkpointed"):
        reboot(disk, m, checkpoint=s)
    assert [a[1] for a in fake_criu.ran] == ["dump", "restore"]
    assert tries_b(disk) == 1
    assert not (tmp_path / "ckpt/manifest.json").exists()


def test_dump_then_jump(disk: Target, m: Machine, tmp_path: Path,  # noqa: F811
                        fake_criu: Criu) -> None:  # fmt: skip
    s = settings_for(tmp_path, os.getpid())
    report = reboot(disk, m, checkpoint=s)
    assert report.saved is not None and m.ran[-1] == ["systemctl", "kexec"]
    assert (tmp_path / "ckpt/manifest.json").is_file()


def test_an_unwritable_dump_directory_is_one_line(tmp_path: Path, fake_criu: Criu) -> None:
    (tmp_path / "file").write_text("")
    s = CheckpointSettings(pidfiles=(str(tmp_path / "w.pid"),), dir=str(tmp_path / "file/ckpt"))
    with pytest.raises(criu.CheckpointFailed, match="Not a directory"):
        criu.dump(s, boot=BOOT_1)
    assert fake_criu.ran == []


def test_a_missing_pid_file_is_one_line(tmp_path: Path, fake_criu: Criu) -> None:
    s = CheckpointSettings(pidfiles=(str(tmp_path / "none.pid"),), dir=str(tmp_path / "c"))
    with pytest.raises(criu.CheckpointFailed, match="cannot read the pid file"):
        criu.dump(s, boot=BOOT_1)


def test_the_agent_reboots_with_the_quiesce_and_checkpoint_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from updater.agent.system import UpdateFlowSystem
    from updater.config import Config, HooksSettings, QuiesceSettings
    from updater.hooks import stages

    seen: list[bootflow.Request] = []
    monkeypatch.setattr(bootflow, "reboot", lambda t, request, s, a: seen.append(request))
    cfg = Config(quiesce=QuiesceSettings(grace=7), hooks=HooksSettings(dir="/x/hooks"),
                 checkpoint=CheckpointSettings(units=("a.service",)))  # fmt: skip
    system = UpdateFlowSystem(cfg, target=lambda: None)  # type: ignore[arg-type,return-value]
    system.reboot("kexec")
    assert seen[0].quiesce.grace == 7 and seen[0].checkpoint.units == ("a.service",)
    # the flow runs the pre-reboot hooks, with the agent's settings
    assert seen[0].hooks == stages.PreReboot(cfg.hooks, cfg.update.state_dir)

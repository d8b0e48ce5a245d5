"""CRIU for real on this host's kernel: a counting process dumped by ``criu.dump`` stops, and
``criu.restore`` (as after a boot) brings it back with the same pid and its count; the
``updater checkpoint check`` verdict is the one of ``criu check`` itself. Skips, naming
CRIU's own reason, where ``criu check`` fails (e.g. a kernel newer than the CRIU release)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from updater.config import CheckpointSettings
from updater.quiesce import criu

from .conftest import Cli, need_tools

pytestmark = pytest.mark.integration

OTHER_BOOT = "6d1c2a9e-1e44-4f0a-a7b3-2f0d2b7c9e02"


def criu_check() -> subprocess.CompletedProcess[str]:
    need_tools("criu")
    return subprocess.run(["criu", "check"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def criu_works() -> None:
    if os.geteuid() != 0:
        pytest.skip("criu needs root")
    proc = criu_check()
    if proc.returncode != 0:
        # The first Error line names the cause; the later ones say that CRIU gave up.
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                 if "Error" in ln and "exited, status" not in ln]  # fmt: skip
        pytest.skip(f"criu check fails on this kernel ({os.uname().release}): "
                    f"{lines[0].strip() if lines else proc.returncode}")  # fmt: skip


def test_checkpoint_check_agrees_with_criu(cli: Cli) -> None:
    truth = criu_check().returncode == 0
    got = cli("checkpoint", "check", "--json", check=False)
    assert (got.returncode == 0) == truth
    assert f'"criu": {"true" if truth else "false"}' in got.stdout


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    out = tmp_path / "count"
    proc = subprocess.Popen(
        ["sh", "-c", f"i=0; while :; do i=$((i+1)); echo $i > {out}; sleep 0.2; done"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    yield proc, out
    for kill in (os.killpg, os.kill):  # the restored tree keeps its pid and process group
        try:
            kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.returncode is None:
        proc.wait(timeout=10)


def count(path: Path) -> int:
    for _ in range(50):
        text = path.read_text().strip()
        if text:
            return int(text)
        time.sleep(0.1)
    raise AssertionError(f"{path} stayed empty")


def test_dump_and_restore_keep_the_count(
    criu_works: None, counter: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, out = counter
    pid = proc.pid
    pidfile = tmp_path / "counter.pid"
    pidfile.write_text(f"{pid}\n")
    settings = CheckpointSettings(pidfiles=(str(pidfile),), dir=str(tmp_path / "ckpt"))
    time.sleep(1)
    manifest = criu.dump(settings)
    assert manifest is not None and manifest.trees[0].pid == pid
    frozen = count(out)
    # criu dump killed the tree once it was dumped: reap it, which frees its pid for the restore.
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = criu.restore(settings, boot=OTHER_BOOT)
    assert done is not None and done.failed == ()
    time.sleep(1)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sh\0-c")
    assert count(out) > frozen

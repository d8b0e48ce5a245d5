"""Unit tests are pure: any accidental subprocess call fails loudly, and the prepared-kexec
record that the reboot flows drop lives in a directory of the test, not in the host's /run."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unit test tried to run a command: {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture(autouse=True)
def _no_host_run_files(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    from updater import fileprepared, prepared

    run = tmp_path_factory.mktemp("run")
    for module in (prepared, fileprepared):
        monkeypatch.setattr(module, "RECORD", str(run / "kexec-prepared.json"))
        monkeypatch.setattr(module, "KEXEC_LOADED", str(run / "kexec_loaded"))
    return run

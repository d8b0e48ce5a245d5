"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Hypothesis' per-example deadline is a timing assertion: on a shared two-core machine it fails
# under load, not for a defect. `benchmarks/mutation.py` also derandomizes the examples, so that
# its verdicts do not depend on the run.
try:
    from hypothesis import settings
except ImportError:  # the TUF conformance suite runs under this conftest without hypothesis
    pass
else:
    settings.register_profile("updater", deadline=None)
    settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
    settings.load_profile(os.environ.get("UPDATER_HYPOTHESIS_PROFILE", "updater"))


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory in memory when possible: the partitioning tools and the slot writer
    fsync after every call or frame, which costs up to a second each on a real disk and nothing
    on tmpfs."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="updater-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_host_run_files(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    """The prepared-kexec record that the reboot flows read and drop, the kexec_loaded flag and
    the parsed-configuration cache, in a directory of the test instead of the host's /run and
    /sys (in this process; a test that needs them names its own)."""
    from updater import config, fileprepared, prepared

    run = tmp_path_factory.mktemp("run")
    for module in (prepared, fileprepared):
        monkeypatch.setattr(module, "RECORD", str(run / "kexec-prepared.json"))
        monkeypatch.setattr(module, "KEXEC_LOADED", str(run / "kexec_loaded"))
    monkeypatch.setattr(config, "CACHE_PATH", str(run / "config.json"))
    return run

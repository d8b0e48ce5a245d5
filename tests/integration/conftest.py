"""Shared fixtures for the integration tier: real tools on image files and loop devices."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from updater import layout

if TYPE_CHECKING:
    from tests.integration.fleet import EtcdServer

ROOT = Path(__file__).resolve().parents[2]


def need_tools(*names: str) -> None:
    """Skip unless every tool is installed (a real capability check)."""
    missing = [
        n for n in names if shutil.which(n, path=os.environ["PATH"] + ":/usr/sbin:/sbin") is None
    ]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed)")


def tool(*argv: str) -> str:
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return out.stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Cli:
    """Runs the installed console script (or ``python -m updater``) and keeps the result."""

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        exe = ROOT / ".venv" / "bin" / "updater"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env={**os.environ, "LANG": "C.UTF-8"}
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"updater {' '.join(args)} failed: {proc.stderr}")
        return proc


@pytest.fixture
def cli() -> Cli:
    return Cli()


@contextlib.contextmanager
def loop_device(
    image: Path,
    sector_size: int = 512,
    partscan: bool = False,
    offset: int = 0,
    size: int | None = None,
) -> Iterator[str]:
    """A loop device over ``image`` (from ``offset``, ``size`` bytes), detached afterwards;
    skips when the kernel or the container refuses loop devices."""
    need_tools("losetup")
    argv = ["losetup", "--find", "--show", f"--sector-size={sector_size}", f"--offset={offset}"]
    argv += [f"--sizelimit={size}"] if size is not None else []
    proc = subprocess.run(
        [*argv, str(image)] + (["--partscan"] if partscan else []),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def flatcar_disk(fast_tmp: Path, cli: Cli) -> Path:
    need_tools("sgdisk")
    path = fast_tmp / "disk.img"
    mib = layout.MiB
    small = layout.flatcar_layout(
        usr_size=8 * mib, esp_size=4 * mib, oem_size=4 * mib, root_size=4 * mib
    )
    layout.create_disk(small, str(path))
    return path


CgptField = Callable[[Path, int, str], int]


@pytest.fixture
def cgpt_field() -> CgptField:
    need_tools("cgpt")

    def read(disk: Path, part: int, flag: str) -> int:
        return int(tool("cgpt", "show", "-i", str(part), f"-{flag}", str(disk)).strip(), 0)

    return read


def sgdisk_attributes(disk: Path, part: int) -> int:
    for line in tool("sgdisk", "-i", str(part), str(disk)).splitlines():
        if line.startswith("Attribute flags:"):
            return int(line.split(":", 1)[1].strip(), 16)
    raise AssertionError("sgdisk printed no attribute flags")


@pytest.fixture
def etcd(fast_tmp: Path) -> Iterator[EtcdServer]:
    """A real etcd (Debian's etcd-server) on 127.0.0.1, its data in memory."""
    need_tools("etcd", "sgdisk")
    from tests.integration.fleet import etcd_server

    with etcd_server(fast_tmp) as server:
        yield server


# A repository over HTTP behind a fault-injecting proxy, for the fetch and update tests.
from tests.integration.repos import published, site  # noqa: E402,F401

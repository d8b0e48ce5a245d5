"""Fixtures for the VM tier: capability checks that skip with the missing piece named, machines
that are always killed in teardown, and the project's built A/B disk image."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.vm import harness

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "images" / "build.py"

MachineFactory = Callable[..., harness.Machine]


# The scenarios, longest first (minutes of TCG each, measured in a two-at-a-time run): the VM
# tier runs two machines at a time, one file per worker (``.ci/test``), and a long scenario that
# starts last would keep one worker busy alone at the end. (pytest-xdist hands out the files with
# more tests first, test_boot.py and test_smoke.py, then the one-test files in this order.)
LONGEST_FIRST = (
    "test_update.py", "test_kexec.py", "test_quiesce.py", "test_files.py", "test_hooks.py",
    "test_prepared.py", "test_boot.py", "test_install.py", "test_smoke.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the VM scenarios longest first; every other test keeps its place and its order."""
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    slots = [i for i, item in enumerate(items) if item.path.parent == here]
    ordered = sorted((items[i] for i in slots), key=rank)  # stable within a file
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item


def missing_qemu() -> list[str]:
    missing = harness.missing_tools([harness.QEMU, "qemu-img"])
    if harness.QEMU not in missing:
        # A QEMU built without TCG (some distributions ship KVM-only builds) cannot run here.
        accels = subprocess.run(
            [harness.QEMU, "-accel", "help"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
        ).stdout.split()  # fmt: skip
        if "tcg" not in accels:
            missing.append(f"TCG support in {harness.QEMU}")
    return missing


def missing_ovmf() -> list[str]:
    return [str(p) for p in (harness.OVMF_CODE, harness.OVMF_VARS) if not p.is_file()]


def host_kernels() -> list[Path]:
    """The host's installed kernels, newest name last; only readable ones count."""
    return sorted(p for p in Path("/boot").glob("vmlinuz-*") if os.access(p, os.R_OK))


def _skip_unless(missing: list[str], what: str) -> None:
    if missing:
        pytest.skip(f"{what}: missing {', '.join(missing)} (run .ci/setup)")


@pytest.fixture(scope="session")
def qemu() -> None:
    _skip_unless(missing_qemu(), "QEMU")


@pytest.fixture(scope="session")
def ovmf(qemu: None) -> harness.Firmware:
    _skip_unless(missing_ovmf(), "OVMF firmware")
    return harness.Firmware()


@pytest.fixture(scope="session")
def host_kernel(qemu: None) -> Path:
    kernels = host_kernels()
    _skip_unless([] if kernels else ["/boot/vmlinuz-* (linux-image-amd64)"], "host kernel")
    return kernels[-1]


@pytest.fixture
def machines(tmp_path: Path, qemu: None) -> Iterator[MachineFactory]:
    """Make machines under the test's tmp dir; every one is killed when the test ends."""
    made: list[harness.Machine] = []

    def make(config: harness.VmConfig, name: str = "vm") -> harness.Machine:
        m = harness.Machine(config, tmp_path / name)
        made.append(m)
        return m

    yield make
    for m in made:
        m.kill()
    if made:
        print("vm: logs kept under", tmp_path)


def _load_build_module() -> ModuleType:
    # images/ is not a package: load the builder by path, under a private module name.
    spec = importlib.util.spec_from_file_location("updater_images_build", BUILD_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BUILD_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def built_image(qemu: None) -> Any:
    """The project's A/B disk image (``images/build.py``'s BuildResult), built once and cached."""
    module = _load_build_module()
    from updater.errors import UpdaterError

    # The builder's own host check (root, tools, GRUB's EFI modules) decides whether to skip;
    # a failure of the build itself is a test error, not a skip.
    check_host = getattr(module, "check_host", None)
    if check_host is not None:
        try:
            check_host()
        except UpdaterError as e:
            hint = f" ({e.hint})" if e.hint else ""
            pytest.skip(f"cannot build the image on this host: {e}{hint}")
    return module.build_all()

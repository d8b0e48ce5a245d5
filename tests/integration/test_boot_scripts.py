"""The boot-time scripts with their real interpreters: the initrd library under sh, grub.cfg
under GRUB's own script checker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, need_tools

pytestmark = pytest.mark.integration

LIB = ROOT / "initrd-hooks" / "90updater" / "updater-lib.sh"


def verity_ok(status_line: str) -> bool:
    proc = subprocess.run(
        ["sh", "-c", '. "$0"; updater_verity_ok "$1"', str(LIB), status_line],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.stderr == ""
    return proc.returncode == 0


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("0 185912 verity V", True),
        ("0 185912 verity V -", True),  # newer kernels: a field after the flag (FEC)
        ("0 185912 verity V 12", True),
        ("0 185912 verity C", False),
        ("0 185912 verity C -", False),
        ("0 185912 linear", False),
        ("", False),
        ("0 185912 verity X V", False),
    ],
)
def test_initrd_reads_the_verity_flag_by_field(line: str, ok: bool) -> None:
    need_tools("sh")
    assert verity_ok(line) is ok


def test_grub_cfg_is_valid_grub_script() -> None:
    need_tools("grub-script-check")
    for cfg in ("grub.cfg", "grub-gptprio.cfg"):
        subprocess.run(["grub-script-check", str(Path(ROOT, "grub", cfg))], check=True)

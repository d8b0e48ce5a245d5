"""The boot id the agent tells boots apart by: the kernel's text, or "" for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater.agent.system import read_boot_id

KERNEL = "8c9b2f0e-4d7a-4e51-9a3b-0f6e2d1c5b7a"  # the format of /proc/sys/kernel/random/boot_id


def test_the_kernels_boot_id_is_read(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text(KERNEL + "\n")
    assert read_boot_id(str(path)) == KERNEL


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", KERNEL.upper().encode(), KERNEL[:-1].encode(), (KERNEL + "0").encode(),
     b"\xff" * 36, KERNEL.encode() + b"\x00", b"x" * 4096],
)  # fmt: skip
def test_anything_else_is_unknown(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "boot_id"
    path.write_bytes(content)
    assert read_boot_id(str(path)) == ""


def test_no_file_is_unknown(tmp_path: Path) -> None:
    assert read_boot_id(str(tmp_path / "absent")) == ""

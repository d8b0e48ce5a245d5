"""``updater.install.*`` kernel parameters to ``updater install`` options, split and unquoted as
the kernel's ``next_arg`` does (init/main.c, lib/cmdline.c), the last occurrence winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater.errors import UsageError
from updater.install.params import arguments


def test_parameters_become_options() -> None:
    line = (
        "BOOT_IMAGE=vmlinuz console=ttyS0,115200n8 updater.install.disk=/dev/vda "
        "updater.install.repo=http://10.0.2.100 updater.install.oem=qemu "
        "updater.install.then=kexec updater.install.wipe quiet"
    )
    assert arguments(line) == [
        "--disk", "/dev/vda", "--repo", "http://10.0.2.100", "--oem", "qemu",
        "--then", "kexec", "--wipe",
    ]  # fmt: skip


def test_nothing_for_a_plain_command_line() -> None:
    assert arguments("root=LABEL=ROOT console=ttyS0") == []


def test_kernel_quoting_dashes_and_the_last_occurrence() -> None:
    line = (
        'updater.install.image="/media/usb/release 2.tar" "updater.install.channel=beta" '
        "updater.install.both-slots=1 updater.install.then=reboot updater.install.then=none"
    )
    assert arguments(line) == [
        "--image", "/media/usb/release 2.tar", "--channel", "beta", "--both-slots",
        "--then", "none",
    ]  # fmt: skip


def test_flags_say_yes_or_no_and_init_arguments_are_not_read() -> None:
    assert arguments("updater.install.wipe=0 updater.install.both_slots=yes") == ["--both-slots"]
    assert arguments("x -- updater.install.wipe=1") == []
    with pytest.raises(UsageError, match="say 1 or 0"):
        arguments("updater.install.wipe=maybe")


def test_unknown_keys_and_missing_values_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown kernel parameter updater.install.wpie"):
        arguments("updater.install.wpie=1")
    with pytest.raises(UsageError, match="needs a value"):
        arguments("updater.install.disk")


def test_command_line_options_win_over_kernel_parameters(tmp_path: Path) -> None:
    from updater.cli import build_parser
    from updater.commands import install

    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        "console=ttyS0 updater.install.disk=/dev/vda updater.install.repo=http://10.0.2.100 "
        "updater.install.wipe updater.install.then=kexec updater.install.oem=qemu\n"
    )
    args = build_parser("install").parse_args(
        ["install", "--kernel-cmdline", str(cmdline), "--disk", "/dev/vdb", "--then", "none"]
    )
    install._from_kernel(args)
    assert (args.install_disk, args.repo, args.wipe, args.then, args.oem_id, args.yes) == (
        "/dev/vdb", "http://10.0.2.100", True, "none", "qemu", True,
    )  # fmt: skip
    cmdline.write_text("updater.install.then=sometimes\n")
    bad = build_parser("install").parse_args(["install", "--kernel-cmdline", str(cmdline)])
    with pytest.raises(UsageError, match="kernel parameters are not valid"):
        install._from_kernel(bad)

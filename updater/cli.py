"""Command-line entry point: global options, subcommand dispatch, errors to exit codes.

Exit codes: 0 success, 1 an operation failed or was refused, 2 bad usage. Errors are one line on
stderr; tracebacks only with ``--debug``. This module does no disk I/O of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from updater import __version__
from updater.commands import agent as agent_commands
from updater.commands import boot as boot_commands
from updater.commands import config as config_commands
from updater.commands import install as install_commands
from updater.commands import lock as lock_commands
from updater.commands import releases as release_commands
from updater.commands import repo as repo_commands
from updater.commands import slots as slot_commands
from updater.commands import verity as verity_commands
from updater.errors import UpdaterError
from updater.run import set_debug

DESCRIPTION = """\
A/B image-based OS updater. A disk holds two /usr slots (USR-A, USR-B, Flatcar's usr partition
type); GPT attribute bits say which slot boots next (priority 48-51, tries 52-55, successful 56).
This tool reads and changes that state exactly as Flatcar's GRUB (gptprio.next) and cgpt do.
"""

EPILOG = """\
PART is a partition number (3), a label (USR-B) or a slot letter (B).
Without --disk the disk holding the booted /usr is used (from mount.usr= / verity.usr=PARTUUID= on
the kernel command line). Examples:
  updater status --json
  updater --disk disk.img --booted A set-active B
  updater --disk disk.img next --dry-run
"""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), pointing at --help instead of repeating the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="updater",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"updater {__version__}")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    parser.add_argument(
        "--disk",
        metavar="PATH",
        help="disk or disk image file (default: the disk holding the booted /usr)",
    )
    parser.add_argument(
        "--booted",
        metavar="PART",
        help="treat PART as the booted slot (for image files; default: from /proc/cmdline)",
    )
    parser.add_argument(
        "--esp",
        metavar="DIR",
        help="mounted ESP to use (default: /boot on the running system, else the disk's own)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/updater/updater.toml; see updater config --help)",
    )
    parser.add_argument(
        "--oem",
        metavar="DIR",
        help="mounted OEM partition (default: /oem or /usr/share/oem, else the disk's own)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


COMMAND_MODULES = [
    slot_commands,
    boot_commands,
    verity_commands,
    config_commands,
    repo_commands,
    release_commands,
    agent_commands,
    lock_commands,
    install_commands,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_debug(args.debug)
    try:
        status: int = args.func(args)
        return status
    except UpdaterError as exc:
        if args.debug:
            raise
        line = f"updater: error: {exc.message}"
        if exc.hint:
            line += f" ({exc.hint})"
        sys.stderr.write(line + "\n")
        return exc.exit_code
    except OSError as exc:
        if args.debug:
            raise
        sys.stderr.write(
            f"updater: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ") + "\n"
        )
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("updater: interrupted\n")
        return 130

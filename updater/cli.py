"""Command-line entry point: global options, subcommand dispatch, errors to exit codes.

Exit codes: 0 success, 1 an operation failed or was refused, 2 bad usage. Errors are one line on
stderr; tracebacks only with ``--debug``. This module does no disk I/O of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from importlib import import_module

from updater import __version__
from updater.commands import INDEX
from updater.debug import set_debug
from updater.errors import Interrupted, UpdaterError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, NoReturn

DESCRIPTION = """\
A/B image-based OS updater. A disk holds two /usr slots (USR-A, USR-B, Flatcar's usr partition
type); GPT attribute bits say which slot boots next (priority 48-51, tries 52-55, successful 56).
This tool reads and changes that state exactly as Flatcar's GRUB (gptprio.next) and cgpt do.
"""

EPILOG = """\
PART is a partition number (3), a label (USR-B), a slot letter (B), or a role: booted (the
running slot) or other (the slot that is not running).
Without --disk the disk holding the booted /usr is used (the partition below the mounted /usr,
else mount.usr= / verity.usr=PARTUUID= on the kernel command line). Examples:
  updater status --json
  updater --disk disk.img --booted A set-active B
  updater --disk disk.img next --dry-run
"""


def help_width() -> int:
    """The width argparse wraps help to: what ``shutil.get_terminal_size`` gives ($COLUMNS, else
    the terminal's width, else 80) less 2, as argparse computes it, but without importing
    ``shutil`` (and with it bz2, lzma and zlib) in every command, help or not."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns if columns > 0 else 80) - 2


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), pointing at --help instead of repeating the usage.
    Every parser's help formatter (the given one, or argparse's default) gets its width from
    ``help_width``; subcommand parsers are Parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        formatter = kwargs.get("formatter_class", argparse.HelpFormatter)
        kwargs["formatter_class"] = partial(formatter, width=help_width())
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    parser.add_argument(
        "--disk",
        metavar="PATH",
        help="disk or disk image file (default: the disk holding the booted /usr)",
    )
    parser.add_argument(
        "--booted",
        metavar="PART",
        help="treat PART as the booted slot (for image files; default: the mounted /usr)",
    )
    parser.add_argument(
        "--esp",
        metavar="DIR",
        help="mounted ESP to use (default: the disk's EFI-SYSTEM partition)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/updater/updater.toml; see updater config --help)",
    )
    parser.add_argument(
        "--oem",
        metavar="DIR",
        help="mounted OEM partition to use (default: the disk's OEM partition)",
    )


class _Silent(Parser):
    """Finds the command word only; the full parser reports any error."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def peek(argv: Sequence[str]) -> tuple[str | None, bool]:
    """The command word of ``argv`` (after the global options) when it names a command, and
    whether ``-h``/``--help`` (or an abbreviation) appears anywhere."""
    pre = _Silent(add_help=False)
    _global_options(pre)
    pre.add_argument("-h", "--help", action="store_true")
    pre.add_argument("command", nargs="?")
    try:
        known, _ = pre.parse_known_args(argv)
    except ValueError:  # e.g. a global option without its value
        return None, False
    command: str | None = known.command
    return (command if command in INDEX else None), bool(known.help)


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (after the global options), when it names a command."""
    return peek(argv)[0]


class _Unused:
    """Stands in for the parser of a command that will not run: takes every call a module's
    ``register`` makes on it (``add_argument``, ``set_defaults``, groups, sub-actions) and
    builds nothing."""

    def __getattr__(self, name: str) -> Any:
        return self._take

    def _take(self, *args: object, **kwargs: object) -> _Unused:
        return self


class _OnlyOne:
    """The subparsers action as a module's ``register`` sees it when one command runs: the
    parsers of the module's other commands are never built (each costs start-up time, about
    3 ms under emulation with argparse's message lookups)."""

    def __init__(self, sub: argparse._SubParsersAction[Parser], command: str) -> None:
        self._sub = sub
        self._command = command

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        return self._sub.add_parser(name, **kwargs) if name == self._command else _Unused()


def build_parser(command: str | None = None, *, others: bool = True) -> argparse.ArgumentParser:
    """The parser. With ``command``, only its module is imported and registered in full; the
    other commands are listed with their help line, which is all that ``--help``, a missing or
    an unknown command need. ``others=False`` leaves them out, and their parsers unbuilt (a
    parser that parses ``command`` and prints its help, but whose own ``--help`` would list
    only that command)."""
    parser = Parser(
        prog="updater",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"updater {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = {INDEX[command].module} if command else set()
    registered: set[str] = set()
    for name, entry in INDEX.items():
        if entry.module in registered:
            continue
        if entry.module in wanted:
            module = import_module(f"updater.commands.{entry.module}")
            module.register(sub if others or command is None else _OnlyOne(sub, command))
            registered.add(entry.module)
        elif others:
            sub.add_parser(name, help=entry.help)
    return parser


def one_line(text: str) -> str:
    """``text`` with every control character escaped (a GPT label, an OEM file or a tool's
    message can hold a newline), so that an error is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    # A known command without --help needs no parsers for the other twenty (start-up time).
    command, wants_help = peek(args_list)
    parser = build_parser(command, others=command is None or wants_help)
    args = parser.parse_args(args_list)
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
        sys.stderr.write(one_line(line) + "\n")
        return exc.exit_code
    except OSError as exc:
        if args.debug:
            raise
        line = f"updater: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        sys.stderr.write(one_line(line) + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("updater: interrupted\n")
        return 130
    except Interrupted as exc:
        sys.stderr.write(f"updater: {exc}\n")
        return 128 + exc.signum

"""What every command module shares: the Target of the global options, which slot backend
the machine uses, and output.

Output goes to stdout, flushed at once: a reboot command prints its JSON right before the jump,
and nothing may be left in a buffer when the process is killed by the shutdown it started.
"""

from __future__ import annotations

import argparse
import sys

from updater import config, jsonout, target
from updater.config import Config, SlotBackend

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.target import Target


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def emit(doc: Any) -> None:
    """A ``--json`` document, through the one encoder."""
    out(jsonout.dumps(doc))


def resolve_target(args: argparse.Namespace, disk: str | None = None) -> Target:
    """The Target of the global options (``disk`` overrides ``--disk``), with the ``[boot]``
    settings of the configuration file."""
    settings = config.load(args.config).boot
    return target.resolve(
        disk if disk is not None else args.disk,
        args.booted,
        esp=args.esp,
        oem=args.oem,
        settings=settings,
    )


def file_backend(args: argparse.Namespace) -> Config | None:
    """The configuration when this machine uses the file backend (``[boot] backend =
    "files"``), else None (GPT). Decided from the configuration alone: the file backend's
    modules (``updater.commands.files``) are imported only by a machine that uses it."""
    cfg = config.load(getattr(args, "config", None))
    return cfg if cfg.boot.backend is SlotBackend.FILES else None


class ProgressBar:
    """Progress for people: a tqdm bar per phase on a terminal (stderr), else a line on stdout
    every 10 %. A new phase closes the bar of the one before."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.bar: Any = None
        self.phase = ""
        self.step = -1

    def update(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase, self.step = phase, -1
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=phase, unit="B", unit_scale=True,
                                unit_divisor=1024, file=sys.stderr, leave=True)  # fmt: skip
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        step = done * 10 // total if total else 10
        if step != self.step:
            self.step = step
            out(f"{phase} {done * 100 // total if total else 100} % ({done} of {total} bytes)\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.phase = ""


def version_arg(text: str) -> Any:
    """An argparse ``type``: a release version (``updater.release.parse_version``)."""
    from updater import release

    try:
        return release.parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_repository_options(p: argparse.ArgumentParser, state_help: str) -> None:
    """``--repo``, ``--trusted-root``, ``--state-dir`` and ``--channel``: the ``[update]``
    settings a command that reads the release repository lets the command line override, each
    accepting exactly what the configuration file accepts."""
    for flag, key, metavar, help_text in (
        ("--repo", "repo", "URL|DIR", "release repository ([update] repo)"),
        ("--trusted-root", "trusted_root", "FILE", "root metadata to start trust from"),
        ("--state-dir", "state_dir", "DIR", state_help),
        ("--channel", "channel", "C", "release channel ([update] channel)"),
    ):
        p.add_argument(flag, type=config.option("update", key), metavar=metavar, help=help_text)

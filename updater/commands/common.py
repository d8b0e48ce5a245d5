"""What every command module shares: the Target of the global options, and output.

Output goes to stdout, flushed at once: a reboot command prints its JSON right before the jump,
and nothing may be left in a buffer when the process is killed by the shutdown it started.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from updater import config, jsonout, target
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

"""The one way this project runs external commands.

Argument lists only (never a shell), checked by default, stdin from /dev/null unless input is given,
``LANG=C.UTF-8`` so that tool output parses the same everywhere, and the command echoed with ``+ ``
on stderr when debugging is on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from updater.errors import ToolMissing, UpdaterError

DEBUG = False


def set_debug(enabled: bool) -> None:
    global DEBUG
    DEBUG = enabled


def require_tool(name: str, package: str | None = None) -> str:
    """Return the path of ``name`` or raise ToolMissing naming the Debian package to install."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pkg = package or name
        raise ToolMissing(f"{name} is not installed", hint=f"install the Debian package {pkg}")
    return path


class CommandFailed(UpdaterError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
        super().__init__(f"{shlex.join(argv)} failed: {detail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; raise CommandFailed on a non-zero exit when ``check``."""
    full_env = dict(os.environ)
    full_env["LANG"] = "C.UTF-8"
    full_env.pop("LC_ALL", None)
    if env:
        full_env.update(env)
    if DEBUG:
        sys.stderr.write("+ " + shlex.join(argv) + "\n")
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"{argv[0]} is not installed") from exc
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if proc.stderr else ""
        raise CommandFailed(argv, proc.returncode, err)
    return proc

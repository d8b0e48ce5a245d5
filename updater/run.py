"""The one way this project runs external commands.

Argument lists only (never a shell), checked by default, stdin from /dev/null unless input is given,
and the command echoed with ``+ `` on stderr when debugging is on. The child's environment is built
from scratch (``child_env``): ``PATH``, ``HOME`` and ``TERM`` from ours, ``LANG=C.UTF-8`` and no
``LC_*`` or ``LANGUAGE`` at all, so that every tool prints the untranslated messages that callers
match (``kexec.classify`` reads strerror texts), plus what the caller passes explicitly.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from updater.debug import debugging, set_debug
from updater.errors import DataError, ToolMissing, UpdaterError

# ``subprocess`` (with threading and selectors) is imported by the functions that start a
# process: a command that only plans, such as ``kexec --dry-run``, starts none (start-up time).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import subprocess

__all__ = ["CommandFailed", "child_env", "debugging", "require_tool", "run", "set_debug"]

# Always searched after the caller's PATH: the tools live in sbin on Debian, which a non-login
# root shell or a systemd unit may not have on its PATH.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INHERITED = ("PATH", "HOME", "TERM", "TMPDIR")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child process (see the module docstring)."""
    env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    env["PATH"] = ":".join(p for p in (env.get("PATH", ""), SYSTEM_PATH) if p)
    env["LANG"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def which(name: str, path: str | None = None) -> str | None:
    """Where ``name`` runs from in ``path`` (default: our PATH), as ``shutil.which`` answers on
    Linux: the first executable file; a name with a slash is checked as it is. Here because
    importing ``shutil`` imports bz2, lzma and zlib too, about 30 ms under emulation, on every
    command that checks for a tool before it plans (``updater kexec --dry-run``)."""

    def runnable(candidate: str) -> bool:
        return (os.path.exists(candidate) and os.access(candidate, os.X_OK)
                and not os.path.isdir(candidate))  # fmt: skip

    if os.path.dirname(name):
        return name if runnable(name) else None
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    if not path:
        return None
    seen: set[str] = set()
    for directory in path.split(os.pathsep):
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, name)
        if runnable(candidate):
            return candidate
    return None


def require_tool(name: str, package: str | None = None) -> str:
    """Return the path of ``name`` or raise ToolMissing naming the Debian package to install."""
    path = which(name, child_env()["PATH"])
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
    session: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; raise CommandFailed on a non-zero exit when ``check``.

    ``session``: for programs the operator supplies (hooks): the child gets a session of its
    own, its stderr goes into the captured stdout (one stream, in order), and on ``timeout``
    the whole session is killed, not only the child: a shell script's ``sleep`` would otherwise
    keep the output pipe open and the wait would outlive the timeout. The captured output so far
    travels in the ``subprocess.TimeoutExpired`` raised."""
    import subprocess

    full_env = child_env(env)
    if debugging():
        sys.stderr.write("+ " + shlex.join(argv) + "\n")
    if session:
        try:
            return _run_session(argv, full_env, cwd, timeout)
        except FileNotFoundError as exc:
            raise ToolMissing(f"{argv[0]} is not installed") from exc
        except ValueError as exc:
            raise DataError(f"cannot run {argv[0]}: {exc}") from None
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
    except ValueError as exc:  # an argument with a NUL byte: no exec can carry it
        raise DataError(f"cannot run {argv[0]}: {exc}") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if proc.stderr else ""
        raise CommandFailed(argv, proc.returncode, err)
    return proc


def _run_session(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None, timeout: float | None
) -> subprocess.CompletedProcess[bytes]:
    import subprocess

    with subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, cwd=cwd, start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            try:  # bounded again: a grandchild that left the session may hold the pipe
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out = b""
            raise subprocess.TimeoutExpired(list(argv), timeout or 0, output=out) from None
        except BaseException:  # a signal while waiting: leave nothing of it running
            _kill_session(proc.pid)
            raise
        finally:
            _kill_session(proc.pid)  # what the child left running in its session goes too
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, None)



def _kill_session(pgid: int) -> None:
    import signal  # loaded already by subprocess; a command that runs nothing does not need it

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

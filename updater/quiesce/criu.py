"""CRIU around a kexec: dump the selected process trees before the jump, restore them after the
new slot booted (``updater checkpoint restore``, from ``updater-restore.service``).

``dump`` either dumps every selected tree and writes the manifest, or raises
``CheckpointFailed`` with the trees it had already dumped running again (restored at once), so
that a failed dump never costs the workload: the caller does not kexec then. ``restore`` reads
the manifest (``updater.quiesce.checkpoint``), renames it first (at most one attempt per
checkpoint), restores each tree and reports the downtime; the images of a restored checkpoint
are removed, a failed one is kept for inspection beside ``manifest.restoring.json``.

This module does not decide when to dump (``updater.bootflow``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from updater import atomicfile
from updater.config import CheckpointSettings
from updater.errors import UpdaterError
from updater.log import log
from updater.quiesce import checkpoint
from updater.quiesce.checkpoint import Manifest, Tree
from updater.records import dataclass
from updater.run import CommandFailed, run

BOOT_ID = "/proc/sys/kernel/random/boot_id"


class CheckpointFailed(UpdaterError):
    """A dump or a restore failed; the message is the one line for the operator."""


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    downtime: float  # seconds
    failed: tuple[str, ...]  # "name: why" of each tree that did not come back


def boot_id(path: str = BOOT_ID) -> str:
    try:
        return Path(path).read_text()[:64].strip()
    except OSError as exc:
        raise CheckpointFailed(f"cannot read the boot id {path}: {exc.strerror}") from None


def check() -> str | None:
    """Why CRIU cannot work on this kernel (the last line of ``criu check``), or None."""
    try:
        run(["criu", "check"], timeout=60)
    except CommandFailed as exc:
        return exc.message
    except (UpdaterError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None


def _pid_of(name: str, timeout: float) -> int:
    kind, _, what = name.partition(":")
    if kind == "pidfile":
        try:
            text = Path(what).read_bytes()[:64].decode("ascii", errors="replace")
        except OSError as exc:
            raise CheckpointFailed(f"{what}: cannot read the pid file: {exc.strerror}") from None
        pid = checkpoint.parse_pid(text, what)
    else:
        out = run(["systemctl", "show", "--property=MainPID", "--value", what], timeout=timeout)
        pid = checkpoint.parse_pid(out.stdout.decode(errors="replace"), f"{what} MainPID")
    if not Path(f"/proc/{pid}").is_dir():
        raise CheckpointFailed(f"{name}: process {pid} is not running")
    return pid


def _criu(argv: tuple[str, ...], timeout: float) -> None:
    try:
        run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckpointFailed(f"{argv[0]} {argv[1]} timed out after {timeout:g} s") from None


def dump(
    settings: CheckpointSettings,
    clock: Callable[[], float] = time.time,
    boot: str | None = None,
) -> Manifest | None:
    """Dump every selected tree (module docstring); None when nothing is selected."""
    names = checkpoint.wanted(settings)
    if not names:
        return None
    root = Path(settings.dir)
    if (root / checkpoint.MANIFEST).exists():
        raise CheckpointFailed(
            f"{root / checkpoint.MANIFEST} holds a checkpoint that was never restored; "
            "run updater checkpoint restore, or remove it"
        )
    this_boot = boot or boot_id()
    dumped: list[Tree] = []
    started: float | None = None
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for index, name in enumerate(names):
            pid = _pid_of(name, settings.timeout)
            images = root / str(index)
            shutil.rmtree(images, ignore_errors=True)
            images.mkdir(mode=0o700)
            if started is None:
                started = clock()
            try:
                _criu(checkpoint.dump_argv(pid, str(images), settings), settings.timeout)
            except CommandFailed as exc:
                why = _last_error(images / "dump.log") or exc.message
                raise CheckpointFailed(f"criu dump of {name} (pid {pid}) failed: {why}") from None
            dumped.append(Tree(name, pid, str(index)))
            log(f"checkpoint: dumped {name} (pid {pid}) into {images}")
        assert started is not None
        manifest = Manifest(this_boot, started, tuple(dumped))
        atomicfile.write(root / checkpoint.MANIFEST, manifest.encode(), mode=0o600)
        return manifest
    except BaseException as exc:
        _put_back(root, dumped, settings)
        if isinstance(exc, CheckpointFailed):
            raise
        if isinstance(exc, UpdaterError):  # a bad pid file, systemctl failing
            raise CheckpointFailed(exc.message) from None
        if isinstance(exc, OSError):  # the dump directory cannot be written
            raise CheckpointFailed(f"{exc.filename or root}: {exc.strerror}") from None
        if isinstance(exc, subprocess.TimeoutExpired):
            raise CheckpointFailed(f"{shlex.join(exc.cmd)} timed out") from None
        raise


def _put_back(root: Path, dumped: list[Tree], settings: CheckpointSettings) -> None:
    """Restore trees dumped by a checkpoint that is not going to be used; never raises."""
    for tree in dumped:
        try:
            _criu(checkpoint.restore_argv(str(root / tree.images), settings), settings.timeout)
            log(f"checkpoint: {tree.name} runs again (pid {tree.pid})")
        except (UpdaterError, OSError) as exc:
            log(f"checkpoint: could not restore {tree.name} here ({exc}); its images stay in "
                f"{root / tree.images}")  # fmt: skip


def undo(manifest: Manifest, settings: CheckpointSettings) -> list[str]:
    """The jump failed after the dump: the trees run again here, the manifest goes."""
    root = Path(settings.dir)
    try:
        (root / checkpoint.MANIFEST).unlink()
    except OSError as exc:
        return [f"could not remove {root / checkpoint.MANIFEST} ({exc.strerror})"]
    _put_back(root, list(manifest.trees), settings)
    return [f"restored {len(manifest.trees)} checkpointed process tree(s)"]


def restore(settings: CheckpointSettings, clock: Callable[[], float] = time.time,
            boot: str | None = None) -> Restored | None:  # fmt: skip
    """Restore the checkpoint of the dump directory, if there is one (module docstring)."""
    root = Path(settings.dir)
    source = root / checkpoint.MANIFEST
    try:
        data = source.read_bytes()[: checkpoint.MAX_MANIFEST_BYTES + 1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointFailed(f"{source}: cannot read: {exc.strerror}") from None
    manifest = checkpoint.decode(data, str(source))
    if manifest.boot_id == (boot or boot_id()):
        raise CheckpointFailed(
            f"{source} was written in this boot: its processes may still run; nothing restored"
        )
    os.replace(source, root / checkpoint.RESTORING)  # one attempt, whatever happens next
    failed = []
    for tree in manifest.trees:
        images = root / tree.images
        try:
            _criu(checkpoint.restore_argv(str(images), settings), settings.timeout)
        except (CheckpointFailed, CommandFailed) as exc:
            why = _last_error(images / "restore.log") or exc.message
            failed.append(f"{tree.name}: {why}")
            continue
        shutil.rmtree(images, ignore_errors=True)
    took = checkpoint.downtime(manifest, clock())
    if not failed:
        (root / checkpoint.RESTORING).unlink(missing_ok=True)
    return Restored(manifest, took, tuple(failed))


def _last_error(log_file: Path) -> str:
    """CRIU's last ``Error`` line of its log, the useful one."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, log_file.stat().st_size - 64 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if "Error" in line]
    return errors[-1][:300] if errors else ""

"""Running a stage's hooks: list its directory, run each executable in order with the stage's
environment and a timeout, pass its output to the journal (stderr lines), stop at the first
failure, and return the stage's verdict (``rules.judge``).

Each hook runs through ``updater.run`` in a session of its own (a timeout kills everything the
hook started), with stdin from /dev/null, the working directory ``/`` and an environment built
from scratch (``rules.environment``). This module decides nothing about what a failure means to
the flow that called it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from updater.config import HooksSettings
from updater.errors import UpdaterError
from updater.hooks import rules
from updater.hooks.rules import Context, HookResult, Stage, Verdict
from updater.log import log
from updater.run import run


def discover(directory: str | Path) -> list[Path]:
    """The executables of ``directory`` that run, in order. A missing directory has none; a
    name that is skipped, a non-executable file or a subdirectory is logged and skipped."""
    folder = Path(directory)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UpdaterError(f"{folder}: cannot list the hooks: {exc.strerror}") from None
    run_names, skipped = rules.order(names)
    for name in skipped:
        log(f"hooks: skipping {folder / name!s} (its name is not a hook's)")
    found = []
    for name in run_names:
        path = folder / name
        try:
            st = path.stat()
        except OSError as exc:
            log(f"hooks: skipping {path}: {exc.strerror}")
            continue
        if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
            log(f"hooks: skipping {path} (not an executable file)")
            continue
        found.append(path)
    if len(found) > rules.MAX_HOOKS:
        raise UpdaterError(f"{folder}: {len(found)} hooks, more than {rules.MAX_HOOKS}")
    return found


def stage_dir(settings: HooksSettings, stage: Stage) -> Path:
    return Path(settings.dir) / stage.directory


def has_hooks(settings: HooksSettings, stage: Stage) -> bool:
    return bool(discover(stage_dir(settings, stage)))


def _journal(stage: Stage, name: str, output: bytes | None) -> None:
    lines = (output or b"").decode("utf-8", "replace").splitlines()
    if len(lines) > rules.MAX_OUTPUT_LINES:
        log(f"{stage} {name}: ... {len(lines) - rules.MAX_OUTPUT_LINES} lines left out")
        lines = lines[-rules.MAX_OUTPUT_LINES :]
    for line in lines:
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in line)
        log(f"{stage} {name}: {text}")


def run_one(path: Path, ctx: Context, timeout: float) -> HookResult:
    stage, name = ctx.stage, path.name
    try:
        proc = run([str(path)], check=False, timeout=timeout, cwd="/", session=True,
                   env=rules.environment(ctx))  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        _journal(stage, name, exc.output)
        return HookResult(name, None, f"did not finish within {timeout:g} s (killed)")
    except UpdaterError as exc:
        return HookResult(name, None, f"could not run: {exc.message}")
    except OSError as exc:  # ENOEXEC (no #! line), EACCES, ...
        return HookResult(name, None, f"could not run: {exc.strerror}")
    _journal(stage, name, proc.stdout)
    return HookResult(name, proc.returncode)


def run_stage(settings: HooksSettings, ctx: Context,
              between: Callable[[], None] | None = None) -> Verdict:  # fmt: skip
    """Every hook of the stage in order, until one fails. ``between`` runs before each hook
    (the agent's watchdog; it may raise to stop)."""
    results: list[HookResult] = []
    for path in discover(stage_dir(settings, ctx.stage)):
        if between is not None:
            between()
        log(f"{ctx.stage} hook {path.name}: running")
        result = run_one(path, ctx, settings.timeout)
        results.append(result)
        if not rules.passed(ctx.stage, result):
            log(f"{ctx.stage} hook {path.name} {result.describe()}")
            break
    asked = bool(ctx.reboot_file) and Path(ctx.reboot_file or "").exists()
    return rules.judge(ctx.stage, results, reboot_file=asked)


class HookFailed(UpdaterError):
    """A hook of a stage that stops its flow failed."""


def require(settings: HooksSettings, ctx: Context, *, what: str) -> Verdict:
    """``run_stage``, raising HookFailed (one line: the hook, and that ``what`` did not happen)
    when a hook failed."""
    verdict = run_stage(settings, ctx)
    if verdict.failure is not None:
        raise HookFailed(f"{verdict.failure}; {what}")
    return verdict

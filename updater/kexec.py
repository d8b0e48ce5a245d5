"""kexec: what the running kernel allows, the exact commands, and running them.

The decisions are pure functions over a ``KexecSupport`` value (gathered by ``probe_support``)
and return argument lists, so tests compare plans instead of running them:

- ``kexec_file_load`` (``kexec -s``) first: it is the only way under lockdown / Secure Boot, where
  the kernel must be signed. ``kexec_load`` (``kexec -c``) only when file load is unsupported and
  the kernel is not locked down (lockdown forbids it). Never ``-a``: we want to know which one ran.
- A kernel left loaded by an earlier attempt turns a later plain ``systemctl reboot`` into a kexec
  into a stale slot, so every load starts with ``kexec -u`` and every firmware reboot too.
- The clean path is ``systemctl kexec`` (services stop, filesystems unmount; it refuses when
  nothing is loaded); ``--force`` syncs, remounts / read-only and runs ``kexec -e``.
- Never ``--reuse-cmdline``: it copies the old slot's ``mount.usr`` / ``verity.usrhash``.
- Each command is a ``Step`` that says itself whether its failure is tolerated: unloading when
  nothing is loaded fails harmlessly, and so does remounting / read-only when something holds
  it open; a failed jump or reboot is never tolerated.

This module does not choose slots or build command lines (``updater.slots``, ``updater.cmdline``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from enum import StrEnum

from updater.errors import UpdaterError
from updater.records import dataclass
from updater.run import CommandFailed, child_env, run, which


@dataclass(frozen=True)
class Step:
    """One command of a plan, and whether the plan goes on when it fails."""

    argv: tuple[str, ...]
    tolerated: bool = False

    def run(self) -> None:
        run(self.argv, check=not self.tolerated)


def run_steps(steps: Sequence[Step]) -> None:
    """Run the steps in order; the first failure that is not tolerated stops them."""
    for step in steps:
        step.run()


MANAGER_ASKED = 3  # times the manager is asked whether it is going down, ...
MANAGER_PAUSE = 1.0  # ... seconds apart


def stopped_by_shutdown(exc: BaseException) -> bool:
    """Whether the system is going down although the jump command failed: the kernel is then
    about to be executed and must stay loaded (unloading it turns the kexec into a firmware
    reboot into the same trial slot). ``systemctl kexec`` can fail after it queued the job: the
    shutdown stops the service that ran it and kills the command (a stop signal), or the command
    loses the bus the shutdown just stopped ("Failed to connect to bus", exit status 1; seen in
    the VM, under load). So the answer is the service manager's, not the command's: ``stopping``
    (a shutdown job is queued or running), asked up to ``MANAGER_ASKED`` times."""
    if not isinstance(exc, (CommandFailed, KeyboardInterrupt)):
        return False
    import subprocess  # loaded already: a command ran

    for attempt in range(MANAGER_ASKED):
        if attempt:
            time.sleep(MANAGER_PAUSE)
        try:
            proc = run(["systemctl", "is-system-running"], check=False, timeout=10)
        except (UpdaterError, OSError, subprocess.TimeoutExpired):
            continue
        if proc.stdout.decode(errors="replace").strip() == "stopping":
            return True
    return False


def argvs(steps: list[Step]) -> list[list[str]]:
    """The commands as argument lists (the ``commands`` of the kexec JSON contract)."""
    return [list(s.argv) for s in steps]


class Method(StrEnum):
    FILE = "kexec_file_load"
    LOAD = "kexec_load"
    FIRMWARE = "firmware"


@dataclass(frozen=True)
class KexecSupport:
    tool: bool  # kexec-tools installed
    load_disabled: bool  # kernel.kexec_load_disabled = 1 (one-way switch, covers both syscalls)
    lockdown: str  # "none", "integrity" or "confidentiality"
    systemd: bool  # PID 1 is systemd, so `systemctl kexec` / `systemctl reboot` exist

    def blocker(self) -> str | None:
        """Why no kexec can work at all, or None."""
        if not self.tool:
            return "kexec-tools is not installed"
        if self.load_disabled:
            return "kernel.kexec_load_disabled=1"
        return None


class LoadFailed(UpdaterError):
    """Loading the new kernel failed; ``cause`` is EPERM, ENOSYS, EBUSY, ... when recognised."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def require_possible(support: KexecSupport) -> None:
    """LoadFailed when no kexec can work here at all (``KexecSupport.blocker``)."""
    blocker = support.blocker()
    if blocker:
        raise LoadFailed(f"kexec is not possible: {blocker}", "disabled")


@dataclass(frozen=True)
class KexecImage:
    kernel: str
    initrd: str | None
    cmdline: str

    def load_step(self, method: Method) -> Step:
        return Step(tuple(self.load_argv(method)))

    def load_argv(self, method: Method) -> list[str]:
        flag = {Method.FILE: "-s", Method.LOAD: "-c"}[method]
        argv = ["kexec", flag, "-l", self.kernel]
        if self.initrd:
            argv.append(f"--initrd={self.initrd}")
        argv.append(f"--append={self.cmdline}")
        return argv


# Unloading when nothing is loaded fails on some kexec-tools versions; that is fine.
UNLOAD = Step(("kexec", "-u"), tolerated=True)


def exec_steps(*, force: bool, systemd: bool) -> list[Step]:
    """How to jump into the loaded kernel."""
    if force or not systemd:
        # The remount fails when something keeps / busy for writing; sync already made the
        # data durable, so the jump goes on.
        return [Step(("sync",)), Step(("mount", "-o", "remount,ro", "/"), tolerated=True),
                Step(("kexec", "-e"))]  # fmt: skip
    return [Step(("systemctl", "kexec"))]


def firmware_steps(*, force: bool, systemd: bool) -> list[Step]:
    """A normal reboot through the firmware; the loaded kexec kernel is dropped first."""
    if force or not systemd:
        return [UNLOAD, Step(("sync",)), Step(("reboot", "-f"))]
    return [UNLOAD, Step(("systemctl", "reboot"))]


def first_method(support: KexecSupport) -> Method:
    return Method.FIRMWARE if support.blocker() else Method.FILE


def classify(stderr: str) -> str:
    """The errno behind a kexec-tools failure message (it prints strerror text)."""
    text = stderr.lower()
    for needle, cause in (
        ("operation not permitted", "EPERM"),
        ("function not implemented", "ENOSYS"),
        ("not supported", "ENOSYS"),
        ("device or resource busy", "EBUSY"),
        ("key was rejected", "EKEYREJECTED"),
        ("required key not available", "ENOKEY"),
        ("cannot allocate memory", "ENOMEM"),
        ("invalid argument", "EINVAL"),
        ("exec format error", "ENOEXEC"),
    ):
        if needle in text:
            return cause
    return "unknown"


def next_method(support: KexecSupport, tried: Method, cause: str) -> Method:
    """After ``tried`` failed with ``cause``: the classic syscall only when file load is missing
    from this kernel and nothing forbids kexec_load; otherwise the firmware."""
    if tried is Method.FILE and cause == "ENOSYS" and support.lockdown == "none":
        return Method.LOAD
    return Method.FIRMWARE


# ------------------------------------------------------------------------------------ adapter


def probe_support(proc: str = "/proc", sys: str = "/sys") -> KexecSupport:
    disabled = _read(os.path.join(proc, "sys/kernel/kexec_load_disabled")).strip() == "1"
    lockdown = "none"
    text = _read(os.path.join(sys, "kernel/security/lockdown"))
    if "[" in text:
        lockdown = text.split("[", 1)[1].split("]", 1)[0]
    comm = _read(os.path.join(proc, "1/comm")).strip()
    return KexecSupport(
        tool=which("kexec", child_env()["PATH"]) is not None,
        load_disabled=disabled,
        lockdown=lockdown,
        systemd=comm == "systemd" and which("systemctl") is not None,
    )


def unload_or_say(what: str) -> str | None:
    """Unload the loaded kernel (``what``: how it is called in a message); the reason when that
    failed, for the caller to say. Never raises: it runs on ways out that must go on."""
    try:
        UNLOAD.run()
    except (UpdaterError, OSError) as exc:
        return f"could not unload the {what} ({exc})"
    return None


KEXEC_LOADED = "/sys/kernel/kexec_loaded"  # "1" while a kernel is loaded for kexec


def kernel_loaded(path: str = KEXEC_LOADED) -> bool:
    """Whether a kernel is loaded for kexec now (False when the flag cannot be read)."""
    return _read(path).strip() == "1"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def load(image: KexecImage, support: KexecSupport) -> Method:
    """Unload whatever is loaded, then load ``image``; return the method that worked.

    Raises LoadFailed when neither syscall can load it (the caller reboots via the firmware).
    """
    require_possible(support)
    UNLOAD.run()
    method = Method.FILE
    while True:
        try:
            image.load_step(method).run()
            return method
        except CommandFailed as exc:
            cause = classify(exc.stderr)
            nxt = next_method(support, method, cause)
            if nxt is Method.FIRMWARE:
                raise LoadFailed(f"{method} failed ({cause}): {exc.message}", cause) from exc
            method = nxt

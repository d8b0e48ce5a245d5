"""The configuration file, ``/etc/updater/updater.toml``: one table of settings that parses,
validates and documents every key.

Each ``Setting`` names its section and key, the function that turns the TOML value into the
setting's value (and refuses anything else with one line), and its documentation. The defaults
are the field defaults of the section dataclasses (``BootSettings``, ``UpdateSettings``, ...), so
there is one place for each. ``reference()`` renders the table as the Markdown that the README
shows and ``updater config --help`` prints; a test keeps the two equal.

The file is operator input: every problem in it is a ``UsageError`` (exit 2) naming the file, the
section and the key. The file is bounded in size, must be UTF-8, and unknown sections or keys are
refused rather than ignored, so that a misspelt setting never silently keeps a default.

Pure apart from ``load`` (which reads the file). This module does not know what the settings do;
the flows that take a ``Config`` do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
from collections.abc import Callable, Mapping
from enum import StrEnum

from updater.cmdline import Delivery, protected, split_cmdline
from updater.errors import UsageError
from updater.records import MISSING, dataclass, field, fields, replace

# The maintenance windows' parser (``updater.agent.schedule``: hashlib, datetime) and the TOML
# parser are imported when a setting or a file needs them: most commands run on the defaults
# and read no window (start-up time).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from updater.agent.schedule import Window

CONFIG_PATH = "/etc/updater/updater.toml"
LEGACY_BOOT_CONF = "/etc/updater/boot.conf"  # KEY=VALUE file of earlier versions; now [boot]
MAX_CONFIG_BYTES = 256 * 1024


class RebootVia(StrEnum):
    """How a command reboots after it changed the slot to boot next."""

    KEXEC = "kexec"
    FIRMWARE = "firmware"
    NONE = "none"


class RebootStrategy(StrEnum):
    """How the agent reboots into a staged release: ``off`` leaves it to someone else."""

    KEXEC = "kexec"
    FIRMWARE = "firmware"
    OFF = "off"


class SlotBackend(StrEnum):
    """Where the slots live: USR partitions with GPT attributes, or image files in a directory."""

    GPT = "gpt"
    FILES = "files"


class LockBackend(StrEnum):
    NONE = "none"
    ETCD = "etcd"
    FLEETLOCK = "fleetlock"


ARCHES = ("x86_64", "arm64")
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


def native_arch(machine: str | None = None) -> str:
    """This machine's architecture in the project's spelling (``x86_64`` or ``arm64``)."""
    raw = machine if machine is not None else os.uname().machine
    return _ARCH_ALIASES.get(raw, raw)


@dataclass(frozen=True)
class BootSettings:
    extra_args: tuple[str, ...] = ()
    reuse_cmdline: bool = False
    drop_args: tuple[str, ...] = ("rhgb", "quiet")
    delivery: Delivery = Delivery.CMDLINE
    verity: bool = True
    arch: str = field(default_factory=native_arch)
    panic: int = 10
    backend: SlotBackend = SlotBackend.GPT
    images_dir: str = "/var/lib/updater/images"
    tries: int = 3


@dataclass(frozen=True)
class UpdateSettings:
    repo: str = ""
    trusted_root: str = "/usr/share/updater/root.json"
    state_dir: str = "/var/lib/updater"
    channel: str = "stable"
    reboot: RebootVia = RebootVia.NONE
    timeout: float = 30.0
    retries: int = 4


@dataclass(frozen=True)
class AgentSettings:
    interval: float = 3600.0
    jitter: float = 0.1
    channel: str = ""
    version: str = ""
    reboot: RebootStrategy = RebootStrategy.KEXEC
    windows: tuple[Window, ...] = ()
    timezone: str = "localtime"
    machine_id_file: str = "/etc/machine-id"
    metrics_file: str = "/var/lib/prometheus/node-exporter/updater.prom"
    reboot_required_file: str = "/run/reboot-required"


@dataclass(frozen=True)
class LockSettings:
    backend: LockBackend = LockBackend.NONE
    endpoints: tuple[str, ...] = ()
    group: str = "default"
    id: str = ""
    ttl: float = 900.0
    retry: float = 60.0
    prefix: str = "updater/reboot-lock"
    timeout: float = 10.0


@dataclass(frozen=True)
class HealthSettings:
    commands: tuple[tuple[str, ...], ...] = ()
    units: tuple[str, ...] = ()
    timeout: float = 60.0
    deadline: float = 300.0
    interval: float = 10.0


@dataclass(frozen=True)
class InstallSettings:
    assets: str = "/usr/share/updater/install"


@dataclass(frozen=True)
class HooksSettings:
    dir: str = "/etc/updater/hooks"
    timeout: float = 300.0


@dataclass(frozen=True)
class QuiesceSettings:
    stop_commands: tuple[tuple[str, ...], ...] = ()
    kill: bool = True
    grace: float = 2.0
    step_timeout: float = 30.0
    timeout: float = 120.0


@dataclass(frozen=True)
class CheckpointSettings:
    pidfiles: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    dir: str = "/var/lib/updater/checkpoint"
    shell_job: bool = True
    timeout: float = 120.0


@dataclass(frozen=True)
class Config:
    boot: BootSettings = field(default_factory=BootSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    lock: LockSettings = field(default_factory=LockSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    install: InstallSettings = field(default_factory=InstallSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    quiesce: QuiesceSettings = field(default_factory=QuiesceSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    source: str | None = None  # the file it was read from; None: every default


SECTIONS: Mapping[str, type[Any]] = {
    "boot": BootSettings,
    "update": UpdateSettings,
    "agent": AgentSettings,
    "lock": LockSettings,
    "health": HealthSettings,
    "install": InstallSettings,
    "hooks": HooksSettings,
    "quiesce": QuiesceSettings,
    "checkpoint": CheckpointSettings,
}

# ------------------------------------------------------------------------------ value parsers
# Each takes the TOML value and returns the setting's value, or raises ValueError whose text
# completes "[section] key: ...".


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, not {value!r}")


def _kernel_words(value: object) -> tuple[str, ...]:
    """A string split the way the kernel splits its command line, or a list of single words."""
    if isinstance(value, str):
        words = split_cmdline(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        words = tuple(value)
        for word in words:
            if split_cmdline(word) != (word,):
                raise ValueError(f"{word!r} is not exactly one kernel argument")
    else:
        raise ValueError("must be a string or a list of strings")
    for word in words:
        if not word.isprintable():
            raise ValueError(f"{word!r} holds control characters")
    return words


def _extra_args(value: object) -> tuple[str, ...]:
    """Kernel words that may not set a protected argument (the slot, its root hash, init...)."""
    words = _kernel_words(value)
    for word in words:
        if protected(word):
            raise ValueError(
                f"{word!r} would set a slot-specific or protected argument, which the updater "
                "sets itself"
            )
    return words


@dataclass(frozen=True)
class _Enum:
    """A member of ``kind`` by its value. (The checks are objects, not closures, so that the
    mutation run, which builds the settings table once at import, reaches their code.)"""

    kind: type[StrEnum]

    def __call__(self, value: object) -> Any:
        choices = [str(m) for m in self.kind]
        if isinstance(value, str) and value in choices:
            return self.kind(value)
        raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")


def _arch(value: object) -> str:
    if isinstance(value, str) and value in _ARCH_ALIASES:
        return _ARCH_ALIASES[value]
    raise ValueError(f"must be one of {', '.join(ARCHES)}, not {value!r}")


def _absolute_path(value: object) -> str:
    if isinstance(value, str) and value.startswith("/") and value.isprintable():
        return value
    raise ValueError(f"must be an absolute path, not {value!r}")


# The patterns of this module are strings, compiled by ``re`` on first use (and cached there):
# a command compiles only those it matches, not every one at import (start-up time).
_IMAGES_DIR = r"(/[A-Za-z0-9._-]+)+/?"


def _images_dir(value: object) -> str:
    """An absolute directory that can travel on the kernel command line and through the
    initrd's shell unquoted: letters, digits, ``. _ -`` and ``/`` only, no ``..``; a trailing
    ``/`` is dropped (the command line and GRUB's menu name it without one)."""
    if (isinstance(value, str) and len(value) <= 128 and re.fullmatch(_IMAGES_DIR, value)
            and ".." not in value.split("/")):  # fmt: skip
        return value.rstrip("/")
    raise ValueError(f"must be an absolute directory of A-Z a-z 0-9 . _ - /, not {value!r}")


_URL = r"https?://[^\s/]+(/\S*)?"


def _repository(value: object) -> str:
    """An http(s) URL or an absolute directory (a local copy of the repository)."""
    if isinstance(value, str) and (value == "" or re.fullmatch(_URL, value)):
        return value.rstrip("/")
    if isinstance(value, str) and value.startswith("/") and value.isprintable():
        return value
    raise ValueError(f"must be an http:// or https:// URL or an absolute directory, not {value!r}")


_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"


def _name(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(_NAME, value):
        return value
    raise ValueError(f"must be 1-64 of a-z 0-9 . _ - starting with a letter or digit: {value!r}")


@dataclass(frozen=True)
class _Seconds:
    low: float
    high: float

    def __call__(self, value: object) -> float:
        low, high = self.low, self.high
        if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
            return float(value)
        raise ValueError(f"must be a number of seconds from {low:g} to {high:g}, not {value!r}")


@dataclass(frozen=True)
class _Count:
    low: int
    high: int

    def __call__(self, value: object) -> int:
        low, high = self.low, self.high
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise ValueError(f"must be a whole number from {low} to {high}, not {value!r}")


def _optional_name(value: object) -> str:
    return value if value == "" else _name(value)


def _fraction(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 0.5:
        return float(value)
    raise ValueError(f"must be a number from 0 to 0.5, not {value!r}")


def _windows(value: object) -> tuple[Window, ...]:
    from updater.agent.schedule import parse_window

    if not isinstance(value, list) or len(value) > 64:
        raise ValueError("must be a list of at most 64 windows")
    return tuple(parse_window(v) for v in value)


# No dot at all: no "..", no file name such as "../../etc/passwd" for the zone database's path.
_ZONE = r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*"


def _timezone(value: object) -> str:
    """``localtime`` (the machine's, /etc/localtime) or an IANA name; whether the name exists
    is checked where the zone is loaded (the agent), since that reads the zone database."""
    if isinstance(value, str) and len(value) <= 64 and re.fullmatch(_ZONE, value):
        return value
    raise ValueError(f"must be localtime or a time zone name such as Europe/Berlin, not {value!r}")


def _optional_path(value: object) -> str:
    return value if value == "" else _absolute_path(value)


def _urls(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > 16:
        raise ValueError("must be a URL or a list of at most 16 URLs")
    for item in items:
        if not (isinstance(item, str) and re.fullmatch(_URL, item)):
            raise ValueError(f"{item!r} is not an http:// or https:// URL")
    return tuple(str(i).rstrip("/") for i in items)


_GROUP = r"[a-zA-Z0-9.-]{1,64}"  # FleetLock's group rule, bounded


def _group(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(_GROUP, value):
        return value
    raise ValueError(f"must be 1-64 of a-z A-Z 0-9 . - (FleetLock's rule), not {value!r}")


_HOLDER = r"[A-Za-z0-9._:@-]{1,128}"


def _holder(value: object) -> str:
    if isinstance(value, str) and (value == "" or re.fullmatch(_HOLDER, value)):
        return value
    raise ValueError(f"must be 1-128 of A-Z a-z 0-9 . _ : @ -, not {value!r}")


_PREFIX = r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"


def _prefix(value: object) -> str:
    if isinstance(value, str) and len(value) <= 128 and re.fullmatch(_PREFIX, value):
        return value
    raise ValueError(f"must be key words joined by /, such as updater/reboot-lock, not {value!r}")


def _commands(value: object) -> tuple[tuple[str, ...], ...]:
    """Each command a string (split as a POSIX shell would, without running a shell) or a list
    of arguments."""
    if not isinstance(value, list) or len(value) > 64:
        raise ValueError("must be a list of at most 64 commands")
    out = []
    for item in value:
        if isinstance(item, str):
            try:
                argv = shlex.split(item)
            except ValueError as exc:
                raise ValueError(f"{item!r}: {exc}") from None
        elif isinstance(item, list) and all(isinstance(a, str) for a in item):
            argv = list(item)
        else:
            raise ValueError(f"{item!r} is not a command string or a list of arguments")
        if not argv or not all(a.isprintable() for a in argv):
            raise ValueError(f"{item!r} is empty or holds control characters")
        out.append(tuple(argv))
    return tuple(out)


_UNIT = r"[A-Za-z0-9:_.@\\-]{1,255}"


def _paths(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise ValueError("must be a list of at most 64 absolute paths")
    return tuple(_absolute_path(v) for v in value)


def _units(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise ValueError("must be a list of at most 64 unit names")
    for item in value:
        if not (isinstance(item, str) and re.fullmatch(_UNIT, item) and "." in item):
            raise ValueError(f"{item!r} is not a unit name such as sshd.service")
    return tuple(value)


# ---------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    parse: Callable[[object], Any]
    doc: str
    default_doc: str | None = None  # how the default reads in the reference, when not literal

    def default(self) -> Any:
        f = next(f for f in fields(SECTIONS[self.section]) if f.name == self.key)
        if f.default is not MISSING:
            return f.default
        factory: Callable[[], Any] = f.default_factory
        return factory()


SETTINGS: tuple[Setting, ...] = (
    Setting("boot", "extra_args", _extra_args,
            "Kernel arguments appended to Flatcar's command line (a string, split as the kernel "
            "splits it, or a list of single arguments). Arguments that name the slot or its "
            "root of trust (`mount.usr`, `verity.usr`, `verity.usrhash`, `usrhash`, `root`, "
            "`init`, `flatcar.first_boot`, ...) are refused: the updater sets those itself."),
    Setting("boot", "reuse_cmdline", _bool,
            "Keep the running kernel's arguments across a kexec, minus every slot-specific one "
            "(`mount.usr`, `verity.usr`, `verity.usrhash`, `usrhash`, `root`, `BOOT_IMAGE`, "
            "`flatcar.first_boot`, `initrd`)."),
    Setting("boot", "drop_args", _kernel_words,
            "Arguments dropped from the reused ones when `reuse_cmdline` is on."),
    Setting("boot", "delivery", _Enum(Delivery),
            "`cmdline`: the slot, its verity hash and the first-boot flag go on the kernel "
            "command line, as GRUB puts them. `initrd`: they travel in a small cpio appended to "
            "the initrd, and the command line stays the same across slots and updates."),
    Setting("boot", "verity", _bool,
            "Refuse a kernel that carries no dm-verity root hash; `false` for images without "
            "verity (`mount.usr=PARTUUID=`)."),
    Setting("boot", "arch", _arch,
            "Where the root hash sits in the kernel (`x86_64`: byte 0x40, `arm64`: byte 512), "
            "and which releases `update` takes.", "this machine's"),
    Setting("boot", "panic", _Count(-1, 3600),
            "`panic=N` on every command line the updater builds and in the ESP's grubenv for "
            "`grub/grub.cfg`: a kernel that panics reboots after N seconds (through the "
            "firmware, where GRUB's tries decide the slot); -1 reboots at once, 0 never "
            "reboots (a machine that stays down)."),
    Setting("boot", "backend", _Enum(SlotBackend),
            "`gpt`: the slots are the USR-A/USR-B partitions with their GPT priority, tries and "
            "successful bits. `files`: the OS is image files in `images_dir` (`root.img`, "
            "`root-new.img`, `root-old.img`), promoted by the initrd (README, \"The file "
            "backend\")."),
    Setting("boot", "images_dir", _images_dir,
            "The `files` backend's directory of image files, on the root filesystem (the "
            "initrd finds it there as `updater.images=` on the kernel command line): an "
            "absolute path of at most 128 characters, A-Z a-z 0-9 . _ - and /, no `..` (a "
            "trailing / is dropped)."),
    Setting("boot", "tries", _Count(1, 9),
            "The `files` backend's boot tries for a new image: boots the initrd allows it "
            "before it reverts to `root-old.img` by itself, unless `mark-good` ran."),
    Setting("update", "repo", _repository,
            "The release repository: an `http://` or `https://` URL (its `metadata/` and "
            "`targets/` below it) or an absolute directory holding a copy (offline media). "
            "Empty: `update` needs `--repo`."),
    Setting("update", "trusted_root", _absolute_path,
            "The repository's root metadata shipped in the OS image: the trust anchor when the "
            "state directory has no root yet."),
    Setting("update", "state_dir", _absolute_path,
            "Where the verified metadata and the resume journal are kept."),
    Setting("update", "channel", _name, "The release channel to follow."),
    Setting("update", "reboot", _Enum(RebootVia),
            "What `update` does after activating a release: `kexec`, `firmware` or `none`."),
    Setting("update", "timeout", _Seconds(1, 3600),
            "Seconds without progress after which a connection or a read is given up."),
    Setting("update", "retries", _Count(0, 20),
            "Retries, with exponential backoff, after a transient network failure."),
    Setting("agent", "interval", _Seconds(1, 7 * 86400),
            "Seconds between checks for a release."),
    Setting("agent", "jitter", _fraction,
            "Spread of each pause between checks: 0.1 draws it from 90% to 110% of `interval`, "
            "so that a fleet started together does not ask the repository together."),
    Setting("agent", "channel", _optional_name,
            "The channel the agent follows; empty: `[update] channel`."),
    Setting("agent", "version", _optional_name,
            "Pin the machine to this release (also older ones); empty: the newest."),
    Setting("agent", "reboot", _Enum(RebootStrategy),
            "How the agent reboots into a staged release: `kexec` (falling back to the "
            "firmware where kexec is impossible), `firmware`, or `off`: write "
            "`reboot_required_file` and let someone else reboot (kured, an operator)."),
    Setting("agent", "windows", _windows,
            "Maintenance windows for reboots, e.g. `[{days = [\"Sat\", \"Sun\"], start = "
            "\"02:00\", minutes = 120}]`: local start time on those days, length in minutes. "
            "Empty: any time."),
    Setting("agent", "timezone", _timezone,
            "The time zone of `windows`: `localtime` (the machine's, /etc/localtime) or a name "
            "such as `Europe/Berlin`."),
    Setting("agent", "machine_id_file", _absolute_path,
            "The machine id (machine-id(5)) from which the rollout wave seed (0..2047) and the "
            "lock holder id are derived."),
    Setting("agent", "metrics_file", _optional_path,
            "Prometheus text file for node_exporter's textfile collector; empty: none."),
    Setting("agent", "reboot_required_file", _absolute_path,
            "Written when a reboot is needed and `reboot` is `off` (the file kured watches)."),
    Setting("lock", "backend", _Enum(LockBackend),
            "Reboot coordination: `none`, `etcd` (a semaphore in etcd v3) or `fleetlock` (a "
            "FleetLock server)."),
    Setting("lock", "endpoints", _urls,
            "etcd client URLs (tried in order), or the FleetLock server's base URL."),
    Setting("lock", "group", _group,
            "The reboot group: each group has its own maximum number of machines rebooting at "
            "once."),
    Setting("lock", "id", _holder,
            "This machine's holder id; empty: derived from the machine id."),
    Setting("lock", "ttl", _Seconds(2, 86400),
            "Seconds the etcd lease of a holder lives without being renewed: it must cover one "
            "reboot until the agent runs again (it renews the lease after booting and while it "
            "verifies), and is how long a machine that died holding the lock blocks its group."),
    Setting("lock", "retry", _Seconds(0.1, 3600),
            "Seconds between attempts at a busy lock, and after a failed step."),
    Setting("lock", "prefix", _prefix, "The etcd key prefix of the semaphores."),
    Setting("lock", "timeout", _Seconds(0.5, 300),
            "Seconds to wait for etcd or the FleetLock server."),
    Setting("health", "commands", _commands,
            "Commands that must exit 0 on a healthy system (strings split like a shell would, "
            "or argument lists); no shell runs them."),
    Setting("health", "units", _units,
            "systemd units that must be active."),
    Setting("health", "timeout", _Seconds(1, 3600), "Seconds each command may take."),
    Setting("health", "deadline", _Seconds(1, 86400),
            "Seconds, from when the agent finds the new slot booted, by which every check must "
            "pass in one round; failing checks are retried until then, and the release is "
            "rolled back after it."),
    Setting("health", "interval", _Seconds(0.1, 600),
            "Seconds between rounds of checks while some still fail."),
    Setting("install", "assets", _absolute_path,
            "What `updater install` puts on a new disk besides the release: `grub/BOOTX64.EFI` "
            "(`BOOTAA64.EFI` on arm64) and `grub/grub.cfg` for the ESP, `root/` (the initial "
            "ROOT; absent: ROOT starts empty), `oem/ID/` (the OEM files for `--oem ID`)."),
    Setting("hooks", "dir", _absolute_path,
            "Where the hook directories are: `pre-install.d`, `post-install.d`, "
            "`pre-reboot.d`, `first-boot-of-slot.d` and `post-commit.d`, each holding "
            "executables run in lexical order (README, \"Hooks\"). Missing directories run "
            "nothing."),
    Setting("hooks", "timeout", _Seconds(1, 86400),
            "Seconds each hook executable may run; one that takes longer is killed (with "
            "everything it started) and counts as failed."),
    Setting("quiesce", "stop_commands", _commands,
            "Without systemd as PID 1: commands that stop the services before `kexec -e`, in "
            "order (e.g. `/etc/init.d/nginx stop`); no shell runs them. With systemd, "
            "`systemctl kexec` stops the units and this section is not used."),
    Setting("quiesce", "kill", _bool,
            "After the stop commands: `killall5 -15`, `grace` seconds, `killall5 -9` (every "
            "process but the updater's session), as sysvinit's halt does."),
    Setting("quiesce", "grace", _Seconds(0, 600),
            "Seconds between the TERM and the KILL signal."),
    Setting("quiesce", "step_timeout", _Seconds(1, 3600),
            "Seconds each step (a stop command, sync, an unmount, `kexec -e`) may take."),
    Setting("quiesce", "timeout", _Seconds(1, 86400),
            "Seconds the whole quiesce may take; when a step fails or the time is up, the "
            "machine syncs and reboots through the firmware (`reboot -f`) into the same slot."),
    Setting("checkpoint", "pidfiles", _paths,
            "Processes to carry across `updater kexec` with CRIU: files holding the pid of the "
            "root of each process tree. Empty (and no `units`): no checkpoint."),
    Setting("checkpoint", "units", _units,
            "systemd units whose main process tree is carried across (its `MainPID`)."),
    Setting("checkpoint", "dir", _absolute_path,
            "Where the dumps are written: a filesystem that survives the reboot (the ROOT "
            "partition, not /run); `updater checkpoint restore` reads them after the boot."),
    Setting("checkpoint", "shell_job", _bool,
            "Pass `--shell-job` to CRIU: the trees may belong to a session or a terminal "
            "outside them (a process started from a shell)."),
    Setting("checkpoint", "timeout", _Seconds(1, 3600),
            "Seconds one `criu dump` or `criu restore` may take."),
)  # fmt: skip

_BY_KEY = {(s.section, s.key): s for s in SETTINGS}


def _check_table() -> None:
    """Every section field has exactly one setting and the other way round (import time)."""
    wanted = {(name, f.name) for name, cls in SECTIONS.items() for f in fields(cls)}
    if wanted != set(_BY_KEY) or len(_BY_KEY) != len(SETTINGS):
        raise AssertionError(f"settings table and sections differ: {wanted ^ set(_BY_KEY)}")


_check_table()


def option(section: str, key: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a command-line option that overrides ``[section] key``: the
    option accepts exactly what the file accepts."""
    setting = _BY_KEY[(section, key)]

    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def parse(text: str, source: str = CONFIG_PATH) -> Config:
    """The configuration in ``text`` (TOML). Raises UsageError naming the source on any problem."""
    return from_document(_toml(text, source), source)


def _toml(text: str, source: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except RecursionError:  # arrays or inline tables nested past the parser's recursion
        raise UsageError(f"{source}: values nested too deeply") from None


def from_document(document: dict[str, Any], source: str) -> Config:
    """The configuration in a parsed TOML ``document``, validated setting by setting."""
    sections: dict[str, Any] = {}
    for name, table in document.items():
        if name not in SECTIONS:
            raise UsageError(f"{source}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise UsageError(f"{source}: {name} must be a [section]")
        values: dict[str, Any] = {}
        for key, raw in table.items():
            setting = _BY_KEY.get((name, key))
            if setting is None:
                known = ", ".join(s.key for s in SETTINGS if s.section == name)
                raise UsageError(f"{source}: unknown setting [{name}] {key} (known: {known})")
            try:
                values[key] = setting.parse(raw)
            except ValueError as exc:
                raise UsageError(f"{source}: [{name}] {key} {exc}") from None
        sections[name] = SECTIONS[name](**values)
    return Config(**sections, source=source)


def decode(data: bytes, source: str) -> str:
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{source}: more than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start})") from None


# Configurations read by this process, by file and content: a command asks for it from several
# places (the disk, the backend, the hooks), and validating it each time is wasted work.
_LOADED: dict[tuple[str, bytes], Config] = {}

# The default file's parsed TOML, for the next command. Importing the TOML parser costs more
# than a third of a short command's start-up on a small machine (``tomllib`` brings ``typing``,
# ``datetime`` and its patterns: about 0.1 s under emulation), and the file rarely changes. The
# cache holds the file's text beside the document, and is used only when the text is the very
# text read now, so it can never stand for another file; it lives in /run (gone at reboot),
# written by root only, and is read as hostile like everything else: a cache that is not a
# regular file of root (or of the reader), is writable by others, too large, or not exactly
# of this shape, is ignored. Validation runs on the document either way.
CACHE_PATH = "/run/updater/config.json"
CACHE_FORMAT = "updater-config-cache-1"
MAX_CACHE_BYTES = 8 * MAX_CONFIG_BYTES


def load(path: str | None = None) -> Config:
    """Read ``path`` (default ``CONFIG_PATH``; a missing default file means every default).

    A leftover ``boot.conf`` of earlier versions is refused with a pointer to ``[boot]`` rather
    than ignored: its settings (a DELIVERY, an EXTRA_ARGS) would otherwise silently stop applying.
    """
    source = path or CONFIG_PATH
    if path is None and os.path.exists(LEGACY_BOOT_CONF):
        raise UsageError(
            f"{LEGACY_BOOT_CONF} is no longer read",
            hint=f"move its settings to the [boot] section of {CONFIG_PATH} "
            "(see updater config --help)",
        )
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if path:
            raise UsageError(f"{path}: no such configuration file") from None
        return Config()
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror}") from None
    known = _LOADED.get((source, data))
    if known is not None:
        return known
    text = decode(data, source)
    document = _cached_document(source, text) if path is None else None
    if document is None:
        document = _toml(text, source)
        if path is None:
            _remember(source, text, document)
    loaded = from_document(document, source)
    _LOADED[(source, data)] = loaded
    return loaded


def _cached_document(source: str, text: str) -> dict[str, Any] | None:
    """The parsed document an earlier command left for exactly ``text``, or None."""
    import stat

    try:
        with open(CACHE_PATH, "rb", opener=_no_follow) as f:
            st = os.fstat(f.fileno())
            if (not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid())
                    or st.st_mode & 0o022):  # fmt: skip
                return None
            data = f.read(MAX_CACHE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_CACHE_BYTES:
        return None
    from updater import jsonout

    try:
        cached = jsonout.loads(data)
    except ValueError:
        return None
    if not (isinstance(cached, dict) and cached.keys() == {"format", "source", "text", "document"}
            and cached["format"] == CACHE_FORMAT and cached["source"] == source
            and cached["text"] == text and isinstance(cached["document"], dict)):  # fmt: skip
        return None
    document: dict[str, Any] = cached["document"]
    return document


def _remember(source: str, text: str, document: dict[str, Any]) -> None:
    """Leave ``document`` for the next command, when it can be written as JSON exactly (no
    dates or times, no infinities) and this process may write the cache; never fails."""
    import json

    cached = {"format": CACHE_FORMAT, "source": source, "text": text, "document": document}
    try:
        data = json.dumps(cached, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError):
        return
    if len(data) > MAX_CACHE_BYTES:
        return
    temporary = f"{CACHE_PATH}.{os.getpid()}.new"
    try:
        os.makedirs(os.path.dirname(CACHE_PATH), mode=0o755, exist_ok=True)
        with open(temporary, "xb", opener=_no_follow) as f:
            f.write(data)
        os.replace(temporary, CACHE_PATH)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW, 0o644)


def with_overrides(config: Config, section: str, **values: Any) -> Config:
    """``config`` with settings of one section replaced (command-line options win over the
    file); None values are left as they are."""
    current = getattr(config, section)
    given = {k: v for k, v in values.items() if v is not None}
    return replace(config, **{section: replace(current, **given)})


def show(value: Any) -> str:
    """A value as it is written in TOML."""
    from updater.agent.schedule import Window

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Window):
        value = value.as_toml()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective settings, JSON-ready (``updater config show --json``)."""
    out: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        value = getattr(getattr(config, s.section), s.key)
        out.setdefault(s.section, {})[s.key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    from updater.agent.schedule import Window

    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Window):
        return value.as_toml()
    return value


def reference() -> str:
    """The Markdown reference of every setting, by section (README and ``config --help``)."""
    lines: list[str] = []
    for section in SECTIONS:
        lines += [f"`[{section}]`", "", "| key | default | meaning |", "|---|---|---|"]
        for s in SETTINGS:
            if s.section == section:
                default = s.default_doc or f"`{show(s.default())}`"
                lines.append(f"| `{s.key}` | {default} | {s.doc} |")
        lines.append("")
    return "\n".join(lines)

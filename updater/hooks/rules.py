"""Hooks, the pure part: the stages, which files of a hook directory run and in what order, the
environment a hook gets, what a stage's results mean, and the once-per-slot bookkeeping of
``first-boot-of-slot``.

Pure: names, numbers and plain values in, plain values out. It does not list directories, run
anything, read the ledger file or mount a slot (``updater.hooks.runner``,
``updater.hooks.ledger``, ``updater.hooks.firstboot``); nor does it decide what a flow does
after a failure: the flows abort, fail a health check or only log, as the README says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from updater import jsonout
from updater.errors import DataError
from updater.hooks.prereboot import pre_reboot_due as pre_reboot_due  # re-exported: a rule too
from updater.records import dataclass


class Stage(StrEnum):
    PRE_INSTALL = "pre-install"  # before the other slot is touched
    POST_INSTALL = "post-install"  # the new slot written and verified, mounted read-only
    PRE_REBOOT = "pre-reboot"  # before the reboot into a new slot
    FIRST_BOOT = "first-boot-of-slot"  # once per newly activated slot, in its first boot
    POST_COMMIT = "post-commit"  # after the booted slot was marked good

    @property
    def directory(self) -> str:
        return f"{self.value}.d"

    @property
    def aborts(self) -> bool:
        """A failure stops what comes next: the update (nothing switched), the reboot, or the
        commit (the health check fails). A failing ``post-commit`` hook changes nothing: the
        slot is committed already."""
        return self is not Stage.POST_COMMIT


# Exit status of a first-boot-of-slot hook that did its work and asks for one more reboot
# (a rebuilt driver that loads only at boot). Same as creating the file $UPDATER_REBOOT_FILE.
REBOOT_EXIT = 100
MAX_HOOKS = 64  # executables per stage; more is a mistake, not a configuration
MAX_OUTPUT_LINES = 200  # lines of a hook's output kept for the journal (the last ones)

# run-parts' rule for names, so a package manager's leftovers and editor backups never run.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SKIPPED = (".dpkg-old", ".dpkg-dist", ".dpkg-new", ".dpkg-tmp", ".ucf-old", ".ucf-dist",
            ".rpmnew", ".rpmsave", ".disabled", ".swp")  # fmt: skip


def runnable_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and not name.endswith(_SKIPPED)


def order(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The names that run, in lexical (byte) order, and the ones skipped for their name."""
    run: list[str] = []
    skipped: list[str] = []
    for name in sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape")):
        (run if runnable_name(name) else skipped).append(name)
    return run, skipped


@dataclass(frozen=True)
class Context:
    """What a hook is told. ``None``: not known or not meaningful in this stage."""

    stage: Stage
    version: str | None = None  # the release the stage is about (the new one)
    slot: str | None = None  # its slot's letter
    partuuid: str | None = None  # its slot's PARTUUID
    booted_slot: str | None = None
    booted_version: str | None = None
    mount: str | None = None  # post-install: the new slot, mounted read-only
    reboot_file: str | None = None  # first-boot-of-slot: create it to ask for one more reboot
    state_dir: str | None = None


def environment(ctx: Context) -> dict[str, str]:
    """The variables a hook gets on top of the minimal environment of every child (PATH, HOME,
    LANG=C.UTF-8). Every variable is always set; an unknown value is the empty string, so that
    hooks under ``set -u`` need no guards."""
    return {
        "UPDATER_STAGE": str(ctx.stage),
        "UPDATER_VERSION": ctx.version or "",
        "UPDATER_SLOT": ctx.slot or "",
        "UPDATER_SLOT_PARTUUID": ctx.partuuid or "",
        "UPDATER_BOOTED_SLOT": ctx.booted_slot or "",
        "UPDATER_BOOTED_VERSION": ctx.booted_version or "",
        "UPDATER_SLOT_MOUNT": ctx.mount or "",
        "UPDATER_REBOOT_FILE": ctx.reboot_file or "",
        "UPDATER_STATE_DIR": ctx.state_dir or "",
    }


@dataclass(frozen=True)
class HookResult:
    name: str
    status: int | None  # the exit status; None: it did not end by itself, or never started
    problem: str | None = None  # why status is None ("did not finish within 5 s", ...)

    def describe(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.status is not None and self.status < 0:
            return f"was killed by signal {-self.status}"
        return f"exited {self.status}"


@dataclass(frozen=True)
class Verdict:
    failure: str | None = None  # one line naming the hook and what went wrong; None: passed
    reboot: bool = False  # first-boot-of-slot: a hook asked for one more reboot
    ran: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None


def passed(stage: Stage, result: HookResult) -> bool:
    """Whether the next hook of the stage may run after this one."""
    if result.status == 0:
        return True
    return stage is Stage.FIRST_BOOT and result.status == REBOOT_EXIT


def judge(stage: Stage, results: Iterable[HookResult], reboot_file: bool = False) -> Verdict:
    """The stage's verdict from its hooks' results, in the order they ran (a stage stops at its
    first failing hook, so a failure is the last result)."""
    done = tuple(results)
    names = tuple(r.name for r in done)
    for r in done:
        if not passed(stage, r):
            return Verdict(f"{stage} hook {r.name} {r.describe()}", ran=names)
    reboot = stage is Stage.FIRST_BOOT and (
        reboot_file or any(r.status == REBOOT_EXIT for r in done)
    )
    return Verdict(None, reboot, names)


# --------------------------------------------------------------- once per newly activated slot
# The ledger (STATE_DIR/first-boot.json) maps a slot's PARTUUID to what happened in the first
# boot of the image it holds: {"format": 1, "slots": {"<partuuid>": {"image": "<version>:<root
# hash>", "status": "done"|"failed"|"reboot", "detail": "...", "boot_id": "..."}}}. The update
# flow forgets a slot's entry when it makes the slot unbootable for a new image, so each
# activation of a slot runs the hooks once; the image key also tells another tool's write apart.
# On the file backend the key is the image's root hash instead of a PARTUUID (an image file has
# none; its root hash travels with it through every rename), forgotten when it is staged again.

LEDGER_FORMAT = 1
MAX_LEDGER_BYTES = 64 * 1024
MAX_LEDGER_SLOTS = 16


class FirstBootStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    REBOOT = "reboot"  # the hooks passed and asked for one more reboot, in boot ``boot_id``


@dataclass(frozen=True)
class LedgerEntry:
    image: str
    status: FirstBootStatus
    detail: str = ""
    boot_id: str = ""


Ledger = Mapping[str, LedgerEntry]


class Next(StrEnum):
    RUN = "run"  # the hooks have not run for this image in this slot
    DONE = "done"  # they ran and passed (and the reboot they asked for happened)
    FAILED = "failed"  # they ran and failed: the slot is not healthy
    REBOOT = "reboot"  # they passed and asked for a reboot that has not happened yet


def image_key(version: str | None, root_hash: str | None) -> str:
    return f"{version or ''}:{root_hash or ''}"


def next_step(ledger: Ledger, partuuid: str, image: str, boot_id: str) -> Next:
    entry = ledger.get(partuuid.lower())
    if entry is None or entry.image != image:
        return Next.RUN
    if entry.status is FirstBootStatus.FAILED:
        return Next.FAILED
    if entry.status is FirstBootStatus.REBOOT and (not boot_id or entry.boot_id == boot_id):
        return Next.REBOOT  # same boot (or one we cannot tell apart): not rebooted yet
    return Next.DONE


def recorded(ledger: Ledger, partuuid: str, image: str, verdict: Verdict,
             boot_id: str) -> dict[str, LedgerEntry]:  # fmt: skip
    """The ledger after the hooks of ``partuuid``'s first boot gave ``verdict``."""
    if verdict.failure is not None:
        entry = LedgerEntry(image, FirstBootStatus.FAILED, verdict.failure[:500])
    elif verdict.reboot:
        entry = LedgerEntry(image, FirstBootStatus.REBOOT, "", boot_id)
    else:
        entry = LedgerEntry(image, FirstBootStatus.DONE)
    return _put(ledger, partuuid, entry)


def rebooted(ledger: Ledger, partuuid: str) -> dict[str, LedgerEntry]:
    """After the reboot a hook asked for: the slot's first boot is complete."""
    entry = ledger[partuuid.lower()]
    return _put(ledger, partuuid, LedgerEntry(entry.image, FirstBootStatus.DONE))


def forgotten(ledger: Ledger, partuuid: str) -> dict[str, LedgerEntry]:
    """The slot is being rewritten: its next activation is a new first boot."""
    return {k: v for k, v in ledger.items() if k != partuuid.lower()}


def _put(ledger: Ledger, partuuid: str, entry: LedgerEntry) -> dict[str, LedgerEntry]:
    out = {k: v for k, v in ledger.items() if k != partuuid.lower()}
    out[partuuid.lower()] = entry
    while len(out) > MAX_LEDGER_SLOTS:  # slots of disks long gone: the oldest entries go
        del out[next(iter(out))]
    return out


def dumps_ledger(ledger: Ledger) -> bytes:
    slots = {k: {"image": v.image, "status": str(v.status), "detail": v.detail,
                 "boot_id": v.boot_id} for k, v in ledger.items()}  # fmt: skip
    return (json.dumps({"format": LEDGER_FORMAT, "slots": slots}, indent=1) + "\n").encode()


def loads_ledger(data: bytes) -> dict[str, LedgerEntry]:
    """The ledger in ``data``; DataError for anything but a well-formed one."""
    doc: Any = jsonout.bounded_loads(data, MAX_LEDGER_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT or set(doc) != {
        "format", "slots"} or not isinstance(doc["slots"], dict):  # fmt: skip
        raise DataError(f"not a first-boot ledger of format {LEDGER_FORMAT}")
    out: dict[str, LedgerEntry] = {}
    for key, raw in list(doc["slots"].items())[:MAX_LEDGER_SLOTS]:
        if not (isinstance(raw, dict) and set(raw) == {"image", "status", "detail", "boot_id"}
                and all(isinstance(v, str) and len(v) <= 600 for v in raw.values())
                and raw["status"] in set(FirstBootStatus) and len(key) <= 64):  # fmt: skip
            raise DataError(f"entry {key[:64]!r} is malformed")
        out[key.lower()] = LedgerEntry(raw["image"], FirstBootStatus(raw["status"]),
                                       raw["detail"], raw["boot_id"])  # fmt: skip
    return out

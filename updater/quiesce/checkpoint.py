"""Checkpoints of process trees across a kexec, as values: the CRIU commands, the manifest kept
beside the dump, and the downtime.

One dump directory (``[checkpoint] dir``, on a filesystem that survives the reboot) holds one
sub-directory of CRIU images per process tree (``0``, ``1``, ...) and ``manifest.json``, written
last and atomically, so that a manifest exists only when every tree was dumped:

    {"format": 1, "boot_id": "<the dumping boot's id>", "dumped_at": <unix seconds>,
     "trees": [{"name": "pidfile:/run/counter.pid", "pid": 1234, "images": "0"}]}

The restore (after the new slot booted) refuses a manifest of the same boot (``boot_id``), so
that a checkpoint is never restored beside the processes it was taken from, and is done at most
once: the manifest is renamed before the first ``criu restore`` runs.

The downtime is measured on the wall clock, from the moment the first tree was frozen to the end
of the last restore: the only clock both kernels share. The kexec'd kernel sets it from the RTC
while it boots, to the second, so the figure is good to about one second.

Pure: the manifest comes in as bytes. ``updater.quiesce.criu`` runs CRIU and does the file I/O.
"""

from __future__ import annotations

import math
import re

from updater import jsonout
from updater.config import CheckpointSettings
from updater.errors import DataError
from updater.records import dataclass

MANIFEST = "manifest.json"
RESTORING = "manifest.restoring.json"  # renamed to this before the first criu restore
MAX_MANIFEST_BYTES = 64 * 1024
MAX_TREES = 64
FORMAT = 1

# Patterns, compiled when a manifest is read (``re``'s cache), not by every reboot that imports
# this module to ask which trees are wanted (start-up time).
_BOOT_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = r"(pidfile:/|unit:)[ -~]{1,300}"
_IMAGES = r"[0-9]{1,2}"


@dataclass(frozen=True)
class Tree:
    name: str  # what selected it: "pidfile:/run/x.pid" or "unit:x.service"
    pid: int  # the root of the tree, as it was dumped (CRIU restores the same pids)
    images: str  # sub-directory of the dump directory


@dataclass(frozen=True)
class Manifest:
    boot_id: str
    dumped_at: float
    trees: tuple[Tree, ...]

    def encode(self) -> bytes:
        import json  # here: a dry run asks only which trees are wanted (start-up time)

        doc = {
            "format": FORMAT,
            "boot_id": self.boot_id,
            "dumped_at": self.dumped_at,
            "trees": [{"name": t.name, "pid": t.pid, "images": t.images} for t in self.trees],
        }
        return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def decode(data: bytes, source: str) -> Manifest:
    """A manifest read from disk: bounded and checked field by field; one DataError line."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise DataError(f"{source}: {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        doc = jsonout.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{source}: not a format {FORMAT} checkpoint manifest")
    boot_id, dumped_at, trees = doc.get("boot_id"), doc.get("dumped_at"), doc.get("trees")
    if not (isinstance(boot_id, str) and re.fullmatch(_BOOT_ID, boot_id)):
        raise DataError(f"{source}: boot_id is not a boot id: {boot_id!r}")
    if not (isinstance(dumped_at, int | float) and not isinstance(dumped_at, bool)
            and math.isfinite(dumped_at) and dumped_at > 0):  # fmt: skip
        raise DataError(f"{source}: dumped_at is not a time: {dumped_at!r}")
    if not (isinstance(trees, list) and 0 < len(trees) <= MAX_TREES):
        raise DataError(f"{source}: trees must list 1 to {MAX_TREES} process trees")
    out = []
    for item in trees:
        if not isinstance(item, dict):
            raise DataError(f"{source}: a tree is not an object: {item!r}")
        name, pid, images = item.get("name"), item.get("pid"), item.get("images")
        if not (isinstance(name, str) and re.fullmatch(_NAME, name)):
            raise DataError(f"{source}: bad tree name {name!r}")
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 1 < pid < 1 << 22):
            raise DataError(f"{source}: bad pid {pid!r} of {name}")
        if not (isinstance(images, str) and re.fullmatch(_IMAGES, images)):
            raise DataError(f"{source}: bad images directory {images!r} of {name}")
        out.append(Tree(name, pid, images))
    if len({t.images for t in out}) != len(out):
        raise DataError(f"{source}: two trees share an images directory")
    return Manifest(boot_id, float(dumped_at), tuple(out))


def wanted(settings: CheckpointSettings) -> tuple[str, ...]:
    """The names of the trees to carry across, in the order they are dumped."""
    return tuple(f"pidfile:{p}" for p in settings.pidfiles) + tuple(
        f"unit:{u}" for u in settings.units
    )


def dump_argv(pid: int, images_dir: str, settings: CheckpointSettings) -> tuple[str, ...]:
    """``criu dump`` of the tree rooted at ``pid``; it stops and dumps the whole tree, and
    kills it only once the dump is complete (CRIU resumes the tree when the dump fails)."""
    return ("criu", "dump", "--tree", str(pid), "--images-dir", images_dir,
            "--log-file", "dump.log", "-v2", *_common(settings))  # fmt: skip


def restore_argv(images_dir: str, settings: CheckpointSettings) -> tuple[str, ...]:
    """``criu restore`` in the background: CRIU exits once the tree runs again, and the tree is
    re-parented to PID 1."""
    return ("criu", "restore", "--images-dir", images_dir, "--log-file", "restore.log",
            "-v2", "--restore-detached", *_common(settings))  # fmt: skip


def _common(settings: CheckpointSettings) -> tuple[str, ...]:
    return ("--shell-job",) if settings.shell_job else ()


def parse_pid(text: str, source: str) -> int:
    """A pid file's content: one decimal number, optionally followed by a newline."""
    value = text.strip()
    if not (value.isdigit() and len(value) <= 8 and int(value) > 1):
        raise DataError(f"{source}: not a process id: {value[:40]!r}")
    return int(value)


def downtime(manifest: Manifest, restored_at: float) -> float:
    """Seconds from the freeze of the first tree to the end of the last restore."""
    return max(0.0, restored_at - manifest.dumped_at)

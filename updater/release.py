"""Releases as the repository describes them, and which one this machine takes.

A release of version V for channel C and architecture A is a set of TUF targets under
``C/A/V/`` (``usr.img.zst``, ``vmlinuz``, optionally ``initrd``), listed in the channel index
``C/A/index.json``; the usr target's signed custom metadata (key ``"updater"``) carries the
uncompressed size, the dm-verity facts and the frame table (README, "The release format").

Signed is not the same as sane: a compromised or buggy publisher can sign anything, so every
field is checked here as hostile input (types, ranges, the frame table against the sizes and the
signed length, paths inside the release's own directory, version syntax) and becomes a frozen
value. Every problem is a ``VerificationError`` naming the target and the field.

``choose`` is the decision: the newest release newer than the booted one, or a pinned version;
a downgrade only when allowed; "nothing to do" is a result, not an error.

Pure: takes decoded JSON values and bytes, no I/O and no TUF import. It does not check
signatures (python-tuf does, behind ``updater.fetch``) nor the bytes of an image (the slot
writer does, frame by frame and whole).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from updater import jsonout
from updater.config import ARCHES
from updater.errors import ReleaseError, VerificationError
from updater.frames import Frame, FrameTable, MiB
from updater.records import dataclass, field
from updater.verity import BLOCK_SIZE, VerityParams, hash_area_size

FORMAT = 1
CUSTOM_KEY = "updater"  # the key of this project's custom metadata inside a TUF target's "custom"
FS_TYPES = ("squashfs", "erofs")
MAX_IMAGE_SIZE = 64 << 30  # USR partitions are 1-2 GiB in Flatcar; anything near this is hostile
MAX_FRAME_SIZE = 1 << 30
MAX_KERNEL_SIZE = 256 * MiB
MAX_INITRD_SIZE = 1 << 30
MAX_INDEX_SIZE = 4 * MiB
MAX_RELEASES = 10000

_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,3}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Version:
    """Dotted numbers, 1 to 4 components of 0..999999, compared numerically component by
    component with missing components as 0 (so ``2`` == ``2.0``). No leading zeros, so that
    equal versions are spelt one way in an index."""

    key: tuple[int, int, int, int]
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


def parse_version(text: object) -> Version:
    """Raise ValueError (the caller knows whose mistake it is) unless ``text`` is a version."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise ValueError(f"{text!r} is not a version (1 to 4 dotted numbers of 0..999999)")
    parts = [int(p) for p in text.split(".")]
    parts += [0] * (4 - len(parts))
    return Version((parts[0], parts[1], parts[2], parts[3]), text)


def release_dir(channel: str, arch: str, version: Version) -> str:
    return f"{channel}/{arch}/{version}"


def index_path(channel: str, arch: str) -> str:
    return f"{channel}/{arch}/index.json"


def usr_path(channel: str, arch: str, version: Version) -> str:
    return f"{release_dir(channel, arch, version)}/usr.img.zst"


def kernel_path(channel: str, arch: str, version: Version) -> str:
    return f"{release_dir(channel, arch, version)}/vmlinuz"


def initrd_path(channel: str, arch: str, version: Version) -> str:
    return f"{release_dir(channel, arch, version)}/initrd"


# ----------------------------------------------------------------------------- signed targets


@dataclass(frozen=True)
class SignedTarget:
    """A TUF target as python-tuf verified its signature: the facts a release needs from it.
    ``custom`` is the target's custom metadata, still of unknown shape."""

    path: str
    length: int
    hashes: Mapping[str, str]
    custom: object = None


@dataclass(frozen=True)
class Target:
    """A validated target: its path, signed length and SHA-256 (the hash the writer checks)."""

    path: str
    length: int
    sha256: str


def _target(signed: SignedTarget, max_length: int) -> Target:
    sha = signed.hashes.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise VerificationError(f"target {signed.path}: no sha256 hash among its signed hashes")
    if not 0 < signed.length <= max_length:
        raise VerificationError(
            f"target {signed.path}: signed length {signed.length} is outside 1..{max_length}"
        )
    return Target(signed.path, signed.length, sha)


class _Fields:
    """Typed access to one JSON object that must have exactly the expected keys."""

    def __init__(
        self, what: str, value: object, keys: Sequence[str], optional: Sequence[str] = ()
    ) -> None:
        self.what = what
        if not isinstance(value, dict):
            raise self.error(f"is {type(value).__name__}, not an object")
        if not set(keys) <= set(value) <= set(keys) | set(optional):
            missing = sorted(set(keys) - set(value))
            extra = sorted(str(k) for k in set(value) - set(keys) - set(optional))
            raise self.error(
                f"fields differ from format {FORMAT}: missing {missing}, extra {extra}"
            )
        self.value: dict[str, Any] = value

    def error(self, text: str) -> VerificationError:
        return VerificationError(f"{self.what} {text}")

    def integer(self, key: str, low: int, high: int) -> int:
        v = self.value[key]
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise self.error(f"{key}: {v!r} is not a whole number in {low}..{high}")
        return v

    def text(self, key: str, pattern: re.Pattern[str]) -> str:
        v = self.value[key]
        if not isinstance(v, str) or not pattern.fullmatch(v):
            raise self.error(f"{key}: {v!r} is malformed")
        return v

    def equal(self, key: str, expected: object) -> None:
        v = self.value[key]
        if v != expected or type(v) is not type(expected):
            raise self.error(f"{key}: {v!r}, expected {expected!r}")

    def version(self, key: str) -> Version:
        try:
            return parse_version(self.value[key])
        except ValueError as exc:
            raise self.error(f"{key}: {exc}") from None


def _custom(signed: SignedTarget) -> object:
    if not isinstance(signed.custom, dict) or CUSTOM_KEY not in signed.custom:
        raise VerificationError(f"target {signed.path}: no {CUSTOM_KEY!r} custom metadata")
    return signed.custom[CUSTOM_KEY]


# --------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class IndexEntry:
    version: Version
    usr: str  # the usr target's path


def parse_index(data: bytes, channel: str, arch: str) -> tuple[IndexEntry, ...]:
    """The releases ``C/A/index.json`` lists, oldest first. Its bytes were checked against the
    signed length and hashes already; its content is checked here."""
    what = f"index {index_path(channel, arch)}:"
    if len(data) > MAX_INDEX_SIZE:
        raise VerificationError(f"{what} {len(data)} bytes, more than {MAX_INDEX_SIZE}")
    try:
        doc = jsonout.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{what} not JSON: {exc}") from None
    top = _Fields(what, doc, ("format", "channel", "arch", "releases"))
    top.equal("format", FORMAT)
    top.equal("channel", channel)
    top.equal("arch", arch)
    listed = top.value["releases"]
    if not isinstance(listed, list) or len(listed) > MAX_RELEASES:
        raise top.error(f"releases: not a list of at most {MAX_RELEASES} entries")
    entries: dict[Version, IndexEntry] = {}
    for number, raw in enumerate(listed):
        entry = _Fields(f"{what} release {number}", raw, ("version", "usr"))
        version = entry.version("version")
        entry.equal("usr", usr_path(channel, arch, version))
        if version in entries:
            raise entry.error(f"version {version} is listed twice")
        entries[version] = IndexEntry(version, usr_path(channel, arch, version))
    return tuple(sorted(entries.values(), key=lambda e: e.version))


def render_index(channel: str, arch: str, versions: Sequence[Version]) -> bytes:
    """The index document for ``versions`` (publishing); ``parse_index`` reads it back."""
    doc = {
        "format": FORMAT,
        "channel": channel,
        "arch": arch,
        "releases": [
            {"version": str(v), "usr": usr_path(channel, arch, v)} for v in sorted(set(versions))
        ],
    }
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


# ------------------------------------------------------------------------ the usr custom data


@dataclass(frozen=True)
class VerityFacts:
    root_hash: str  # 64 lowercase hex digits, as in the kernel image
    hash_offset: int  # bytes; the filesystem before it, superblock and tree from it
    algorithm: str = "sha256"
    block_size: int = BLOCK_SIZE


@dataclass(frozen=True)
class UsrImage:
    """What the usr target's custom metadata says, validated: everything of a release but the
    kernel and initrd targets themselves (their paths are named here)."""

    version: Version
    channel: str
    arch: str
    fs_type: str
    usr: Target
    size: int
    verity: VerityFacts
    frames: FrameTable
    kernel_path: str
    initrd_path: str | None
    # Rollout waves (Bottlerocket's idea): (seed bound, RFC 3339 start) pairs; a machine whose
    # seed is below a bound may take the release from that wave's start. The agent checks the
    # order and parses the times (``updater.agent.schedule.parse_waves``); empty: everyone now.
    waves: tuple[tuple[int, str], ...] = ()


USR_KEYS = ("format", "kind", "version", "channel", "arch", "size", "fs_type", "verity",
            "frame_size", "frames", "kernel", "initrd")  # fmt: skip
USR_OPTIONAL = ("waves",)
VERITY_KEYS = ("root_hash", "hash_offset", "algorithm", "block_size")
MAX_WAVES = 64
_WAVE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{5,15}(Z|[+-][0-9]{2}:[0-9]{2})", re.IGNORECASE
)
PART_KEYS = ("format", "kind", "version", "channel", "arch")


def usr_custom(image: UsrImage) -> dict[str, Any]:
    """The custom metadata of a usr target (publishing); ``parse_usr`` reads it back."""
    v = image.verity
    return {
        CUSTOM_KEY: {
            "format": FORMAT,
            "kind": "usr",
            "version": str(image.version),
            "channel": image.channel,
            "arch": image.arch,
            "size": image.size,
            "fs_type": image.fs_type,
            "verity": {
                "root_hash": v.root_hash,
                "hash_offset": v.hash_offset,
                "algorithm": v.algorithm,
                "block_size": v.block_size,
            },
            "frame_size": image.frames.frame_size,
            "frames": [[f.compressed_size, f.sha256] for f in image.frames.frames],
            "kernel": image.kernel_path,
            "initrd": image.initrd_path,
            **({"waves": [list(w) for w in image.waves]} if image.waves else {}),
        }
    }


def part_custom(kind: str, channel: str, arch: str, version: Version) -> dict[str, Any]:
    """The custom metadata of a kernel or initrd target (publishing)."""
    return {
        CUSTOM_KEY: {
            "format": FORMAT,
            "kind": kind,
            "version": str(version),
            "channel": channel,
            "arch": arch,
        }
    }


def _frames(fields: _Fields, size: int, length: int) -> FrameTable:
    frame_size = fields.integer("frame_size", MiB, MAX_FRAME_SIZE)
    raw = fields.value["frames"]
    if not isinstance(raw, list) or len(raw) > -(-MAX_IMAGE_SIZE // MiB):
        raise fields.error("frames: not a list of frames")
    table: list[Frame] = []
    for i, pair in enumerate(raw):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], int)
            or isinstance(pair[0], bool)
            or not isinstance(pair[1], str)
            or not _SHA256.fullmatch(pair[1])
        ):
            raise fields.error(f"frames[{i}]: not [compressed length, sha256 hex]")
        table.append(Frame(pair[0], pair[1]))
    frames = FrameTable(frame_size, size, tuple(table))
    problem = frames.problem()
    if problem:
        raise fields.error(f"frames: {problem}")
    if frames.compressed_size != length:
        raise fields.error(
            f"frames: {frames.compressed_size} compressed bytes in all, "
            f"but the signed length is {length}"
        )
    return frames


def _verity(fields: _Fields, size: int) -> VerityFacts:
    v = _Fields(f"{fields.what} verity", fields.value["verity"], VERITY_KEYS)
    v.equal("algorithm", "sha256")
    v.equal("block_size", BLOCK_SIZE)
    root_hash = v.text("root_hash", _SHA256)
    offset = v.integer("hash_offset", BLOCK_SIZE, size - 1)
    if offset % BLOCK_SIZE:
        raise v.error(f"hash_offset: {offset} is not a multiple of {BLOCK_SIZE}")
    # The hash area (superblock and tree) must fit between the offset and the end of the image.
    area = hash_area_size(VerityParams(offset // BLOCK_SIZE, b""), superblock=True)
    if offset + area > size:
        raise v.error(
            f"hash_offset: a tree for {offset} bytes of data needs {area} bytes after it, "
            f"the image has {size - offset}"
        )
    return VerityFacts(root_hash, offset)


def parse_usr(signed: SignedTarget, channel: str, arch: str, version: Version) -> UsrImage:
    """The usr target of release ``version`` listed in the ``channel``/``arch`` index."""
    expected = usr_path(channel, arch, version)
    if signed.path != expected:
        raise VerificationError(f"target {signed.path}: expected {expected}")
    usr = _target(signed, MAX_IMAGE_SIZE)
    f = _Fields(f"target {signed.path}: custom metadata", _custom(signed), USR_KEYS, USR_OPTIONAL)
    f.equal("format", FORMAT)
    f.equal("kind", "usr")
    f.equal("version", str(version))
    f.equal("channel", channel)
    f.equal("arch", arch)
    size = f.integer("size", 2 * BLOCK_SIZE, MAX_IMAGE_SIZE)
    if size % BLOCK_SIZE:
        raise f.error(f"size: {size} is not a multiple of {BLOCK_SIZE}")
    fs_type = f.value["fs_type"]
    if fs_type not in FS_TYPES:
        raise f.error(f"fs_type: {fs_type!r} is not one of {', '.join(FS_TYPES)}")
    verity = _verity(f, size)
    frames = _frames(f, size, usr.length)
    f.equal("kernel", kernel_path(channel, arch, version))
    initrd = f.value["initrd"]
    if initrd is not None:
        f.equal("initrd", initrd_path(channel, arch, version))
    return UsrImage(
        version, channel, arch, fs_type, usr, size, verity, frames,
        kernel_path(channel, arch, version), initrd, _waves(f),
    )  # fmt: skip


def _waves(fields: _Fields) -> tuple[tuple[int, str], ...]:
    raw = fields.value.get("waves", [])
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_WAVES and "waves" in fields.value:
        raise fields.error(f"waves: not a list of 1 to {MAX_WAVES} [seed bound, start] pairs")
    out: list[tuple[int, str]] = []
    for i, pair in enumerate(raw):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], int)
            or isinstance(pair[0], bool)
            or not 1 <= pair[0] <= 2048
            or not isinstance(pair[1], str)
            or not _WAVE_TIME.fullmatch(pair[1])
        ):
            raise fields.error(f"waves[{i}]: not [seed bound 1..2048, RFC 3339 time]")
        out.append((pair[0], pair[1]))
    return tuple(out)


def parse_part(signed: SignedTarget, kind: str, image: UsrImage) -> Target:
    """The kernel or initrd target named by ``image``: same version, channel and arch."""
    limit = MAX_KERNEL_SIZE if kind == "kernel" else MAX_INITRD_SIZE
    target = _target(signed, limit)
    f = _Fields(f"target {signed.path}: custom metadata", _custom(signed), PART_KEYS)
    f.equal("format", FORMAT)
    f.equal("kind", kind)
    f.equal("version", str(image.version))
    f.equal("channel", image.channel)
    f.equal("arch", image.arch)
    return target


@dataclass(frozen=True)
class Release:
    image: UsrImage
    kernel: Target
    initrd: Target | None

    @property
    def version(self) -> Version:
        return self.image.version

    @property
    def arch(self) -> str:
        return self.image.arch

    def to_json(self) -> dict[str, Any]:
        """The ``releases --json`` entry (README, "JSON contracts")."""
        img = self.image
        return {
            "version": str(img.version),
            "channel": img.channel,
            "arch": img.arch,
            "fs_type": img.fs_type,
            "size": img.size,
            "usr": {"path": img.usr.path, "length": img.usr.length, "sha256": img.usr.sha256},
            "root_hash": img.verity.root_hash,
            "hash_offset": img.verity.hash_offset,
            "frame_size": img.frames.frame_size,
            "frames": len(img.frames.frames),
            "kernel": {"path": self.kernel.path, "length": self.kernel.length},
            "initrd": (
                {"path": self.initrd.path, "length": self.initrd.length} if self.initrd else None
            ),
            "waves": [list(w) for w in img.waves],
        }


def read_release(
    channel: str, arch: str, version: Version, lookup: Callable[[str], SignedTarget | None]
) -> Release:
    """Release ``version`` of the ``channel``/``arch`` index from its signed targets;
    ``lookup`` returns the signed target of a path, or None when no signed target has it."""

    def need(path: str) -> SignedTarget:
        signed = lookup(path)
        if signed is None:
            raise VerificationError(f"release {version} names {path}, which no signed target has")
        return signed

    image = parse_usr(need(usr_path(channel, arch, version)), channel, arch, version)
    kernel = parse_part(need(image.kernel_path), "kernel", image)
    initrd = parse_part(need(image.initrd_path), "initrd", image) if image.initrd_path else None
    return Release(image, kernel, initrd)


# --------------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Choice:
    """The release to install, or None with the reason there is nothing to do."""

    release: Release | None
    reason: str
    downgrade: bool = False


def choose(
    releases: Sequence[Release],
    *,
    arch: str,
    booted: Version | None,
    pin: Version | None = None,
    allow_downgrade: bool = False,
) -> Choice:
    """Which release this machine takes.

    Without ``pin``: the newest release for ``arch`` if it is newer than ``booted`` (None: the
    booted version is unknown, so the newest); when the newest is older than the booted one it
    is taken only with ``allow_downgrade`` (a channel switch), otherwise nothing to do. With
    ``pin``: exactly that version; one that is not offered, or older than the booted one
    without ``allow_downgrade``, is refused (``ReleaseError``). Releases for another
    architecture are never taken: when they are all there is, that is refused too.
    """
    if arch not in ARCHES:
        raise ReleaseError(f"unknown architecture {arch!r} (known: {', '.join(ARCHES)})")
    mine = sorted((r for r in releases if r.arch == arch), key=lambda r: r.version)
    others = sorted({r.arch for r in releases if r.arch != arch})
    if pin is not None:
        match = [r for r in mine if r.version == pin]
        if not match:
            elsewhere = [r.arch for r in releases if r.version == pin and r.arch != arch]
            if elsewhere:
                raise ReleaseError(
                    f"release {pin} is for {', '.join(sorted(set(elsewhere)))}, "
                    f"this machine is {arch}"
                )
            offered = ", ".join(str(r.version) for r in mine[-5:]) or "none"
            raise ReleaseError(f"release {pin} is not offered for {arch} (newest: {offered})")
        return _against_booted(match[0], booted, allow_downgrade, pinned=True)
    if not mine:
        if others:
            raise ReleaseError(
                f"the channel has releases only for {', '.join(others)}, this machine is {arch}"
            )
        return Choice(None, f"the channel offers no release for {arch}")
    return _against_booted(mine[-1], booted, allow_downgrade, pinned=False)


def _against_booted(
    release: Release, booted: Version | None, allow_downgrade: bool, *, pinned: bool
) -> Choice:
    version = release.version
    if booted is None:
        return Choice(release, f"release {version} (the booted version is unknown)")
    if version == booted:
        return Choice(None, f"already running release {version}")
    if version > booted:
        return Choice(release, f"release {version} is newer than the booted {booted}")
    if allow_downgrade:
        return Choice(release, f"downgrade from {booted} to {version}, as allowed", True)
    if pinned:
        raise ReleaseError(
            f"release {version} is older than the booted {booted}: downgrade refused",
            hint="pass --allow-downgrade to install it anyway",
        )
    return Choice(
        None,
        f"the booted {booted} is newer than the newest release {version} "
        "(--allow-downgrade takes it)",
    )

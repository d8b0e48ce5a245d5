"""dm-verity hash trees, compatible with ``veritysetup format`` (format 1, sha256, 4 KiB blocks).

What is computed here:
- each data block's digest is SHA256(salt || block); 128 digests fill a 4096-byte hash block whose
  tail is zero; levels are built until one block remains (level 0 holds the data digests);
- on disk the top level comes first and level 0 last, after an optional 512-byte superblock padded
  to one hash block; the root hash is SHA256(salt || top hash block), or SHA256(salt || data) when
  there is a single data block and hence no hash block at all (veritysetup does the same);
- where a recomputed tree and an on-disk hash area first disagree (``check_hash_area``).

This module does no I/O: it takes bytes and returns bytes. Reading devices, threads and writing the
hash area live in ``updater.verityfile``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from updater.errors import UsageError, VerificationError
from updater.guid import Guid
from updater.records import dataclass

# Neither ``typing`` nor ``uuid`` (nor ``dataclasses``, see ``updater.records``) is imported on the
# way of ``updater verity format``: together they cost about a third of its start-up. UUIDs are
# ``updater.guid.Guid``s.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class HashObject(Protocol):
        """What hashlib's sha256 objects offer; a Protocol so that tests may pass any hash."""

        def copy(self) -> HashObject: ...
        def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
        def digest(self) -> bytes: ...


BLOCK_SIZE = 4096
DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
SUPERBLOCK_SIZE = 512
MAX_SALT_SIZE = 256  # the superblock's salt field
ALGORITHM = "sha256"
HASH_TYPE = 1  # 0 is the original Chrome OS format, which puts the salt after the block
SUPERBLOCK_MAGIC = b"verity\0\0"
SUPERBLOCK_VERSION = 1

# signature, version, hash_type, uuid, algorithm, data/hash block size, data_blocks, salt_size,
# 6 pad bytes, salt[256], 168 pad bytes: cryptsetup's little-endian ``struct verity_sb``.
_SB_FORMAT = "<8sII16s32sIIQH6x256s168x"
assert struct.calcsize(_SB_FORMAT) == SUPERBLOCK_SIZE


def parse_salt(text: str) -> bytes:
    """``-`` is the empty salt (as in veritysetup), anything else must be hex of <= 256 bytes."""
    if text == "-":
        return b""
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"salt {text!r} is not hexadecimal", hint="use - for no salt") from None
    if len(salt) > MAX_SALT_SIZE:
        raise UsageError(f"salt is {len(salt)} bytes, at most {MAX_SALT_SIZE} fit the superblock")
    return salt


def blocks_for_size(size: int) -> int:
    """Number of data blocks in ``size`` bytes; dm-verity has no partial blocks."""
    if size <= 0 or size % BLOCK_SIZE:
        raise UsageError(f"data size {size} is not a positive multiple of {BLOCK_SIZE} bytes")
    return size // BLOCK_SIZE


@dataclass(frozen=True)
class VerityParams:
    """Everything that determines the tree; the UUID does not, so it lives in Superblock."""

    data_blocks: int
    salt: bytes

    def __post_init__(self) -> None:
        if self.data_blocks < 1:
            raise UsageError("dm-verity needs at least one data block")
        if len(self.salt) > MAX_SALT_SIZE:
            raise UsageError(f"salt is {len(self.salt)} bytes, at most {MAX_SALT_SIZE} allowed")

    @property
    def data_size(self) -> int:
        return self.data_blocks * BLOCK_SIZE

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Hash blocks per level, level 0 (the data digests) first; empty for one data block."""
        sizes: list[int] = []
        count = self.data_blocks
        while count > 1:
            count = -(-count // HASHES_PER_BLOCK)
            sizes.append(count)
        return tuple(sizes)

    @property
    def tree_blocks(self) -> int:
        return sum(self.level_sizes)

    def level_starts(self) -> tuple[int, ...]:
        """Block index of each level relative to the tree start (top level stored first)."""
        sizes = self.level_sizes
        starts = [0] * len(sizes)
        position = 0
        for level in reversed(range(len(sizes))):
            starts[level] = position
            position += sizes[level]
        return tuple(starts)


def tree_offset(superblock: bool) -> int:
    """Bytes from the hash offset to the first tree block: the superblock takes a whole block."""
    return BLOCK_SIZE if superblock else 0


def hash_area_size(params: VerityParams, superblock: bool) -> int:
    """Bytes written at the hash offset: the padded superblock, if any, then the tree."""
    return tree_offset(superblock) + params.tree_blocks * BLOCK_SIZE


@dataclass(frozen=True)
class Superblock:
    """``volume`` is the UUID's 16 bytes in RFC 4122 order (a ``Guid`` is taken too);
    ``.uuid`` gives it as a ``Guid``."""

    params: VerityParams
    volume: bytes

    def __init__(self, params: VerityParams, volume: Guid | bytes) -> None:
        raw = volume if isinstance(volume, bytes) else volume.bytes
        if len(raw) != 16:
            raise UsageError(f"a UUID has 16 bytes, not {len(raw)}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "volume", raw)

    @property
    def uuid(self) -> Guid:
        return Guid(bytes=self.volume)

    def encode(self) -> bytes:
        """The 512-byte superblock followed by zeros up to one hash block."""
        raw = struct.pack(
            _SB_FORMAT,
            SUPERBLOCK_MAGIC,
            SUPERBLOCK_VERSION,
            HASH_TYPE,
            self.volume,
            ALGORITHM.encode(),
            BLOCK_SIZE,
            BLOCK_SIZE,
            self.params.data_blocks,
            len(self.params.salt),
            self.params.salt,
        )
        return raw.ljust(BLOCK_SIZE, b"\0")

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Superblock:
        """Parse a superblock; anything this project would not have written is refused."""
        if len(raw) < SUPERBLOCK_SIZE:
            raise VerificationError(f"verity superblock is truncated to {len(raw)} bytes")
        values = struct.unpack(_SB_FORMAT, bytes(raw[:SUPERBLOCK_SIZE]))
        magic, version, hash_type, uuid_bytes, algorithm, data_bs, hash_bs = values[:7]
        data_blocks, salt_size, salt = values[7:]
        if magic != SUPERBLOCK_MAGIC:
            raise VerificationError("no verity superblock (the signature is missing)")
        fields = [
            ("version", version, SUPERBLOCK_VERSION),
            ("hash type", hash_type, HASH_TYPE),
            ("algorithm", algorithm.rstrip(b"\0").decode(errors="replace"), ALGORITHM),
            ("data block size", data_bs, BLOCK_SIZE),
            ("hash block size", hash_bs, BLOCK_SIZE),
        ]
        for name, found, wanted in fields:
            if found != wanted:
                raise VerificationError(f"superblock {name} is {found!r}, expected {wanted!r}")
        if salt_size > MAX_SALT_SIZE or data_blocks < 1:
            raise VerificationError("superblock has an invalid salt size or data block count")
        return cls(VerityParams(data_blocks, salt[:salt_size]), uuid_bytes)


def salted_hash(salt: bytes) -> HashObject:
    """A sha256 object that has absorbed the salt; copy() it per block instead of re-salting."""
    return hashlib.sha256(salt)


def block_views(data: bytes | bytearray | memoryview) -> list[memoryview]:
    """A view of each whole 4096-byte block of ``data``; a reader that refills one buffer makes
    these once and hashes them after every read (``digest_each``)."""
    view = memoryview(data)
    if len(view) % BLOCK_SIZE:
        raise UsageError(f"{len(view)} bytes is not a whole number of {BLOCK_SIZE}-byte blocks")
    return [view[offset : offset + BLOCK_SIZE] for offset in range(0, len(view), BLOCK_SIZE)]


def digest_each(salted: HashObject, blocks: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Concatenated SHA256(salt || block) of each block; the innermost loop of every tree."""
    copy = salted.copy
    digests: list[bytes] = []
    append = digests.append
    for block in blocks:
        h = copy()
        h.update(block)
        append(h.digest())
    return b"".join(digests)


def digest_blocks(salted: HashObject, data: bytes | bytearray | memoryview) -> bytes:
    """Concatenated SHA256(salt || block) of each whole 4096-byte block of ``data``."""
    return digest_each(salted, block_views(data))


def _pad_to_block(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK_SIZE)


@dataclass(frozen=True)
class VerityTree:
    params: VerityParams
    levels: tuple[bytes, ...]  # level 0 (data digests) first, each padded to whole blocks
    root_hash: bytes

    @classmethod
    def from_leaf_digests(cls, params: VerityParams, digests: bytes) -> VerityTree:
        """Build the upper levels from the data digests (the cheap 1/128 of the work)."""
        if len(digests) != params.data_blocks * DIGEST_SIZE:
            raise UsageError(
                f"got {len(digests) // DIGEST_SIZE} data digests for {params.data_blocks} blocks"
            )
        if params.data_blocks == 1:
            return cls(params, (), digests)
        salted = salted_hash(params.salt)
        levels = [_pad_to_block(digests)]
        while len(levels[-1]) > BLOCK_SIZE:
            levels.append(_pad_to_block(digest_blocks(salted, levels[-1])))
        return cls(params, tuple(levels), digest_blocks(salted, levels[-1]))

    def tree_bytes(self) -> bytes:
        """The tree as stored on disk: top level first."""
        return b"".join(reversed(self.levels))

    def hash_area(self, superblock: Superblock | None) -> bytes:
        head = superblock.encode() if superblock is not None else b""
        return head + self.tree_bytes()


class VerityTreeBuilder:
    """Streaming construction: feed data blocks (or digests hashed elsewhere) in order, then finish.

    An install pipeline calls ``update`` with each chunk it writes, so the tree is ready when the
    last byte is on disk without reading the partition back.
    """

    def __init__(self, params: VerityParams) -> None:
        self.params = params
        self._salted = salted_hash(params.salt)
        self._digests: list[bytes] = []
        self._blocks = 0

    @property
    def salted(self) -> HashObject:
        return self._salted

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.add_digests(digest_blocks(self._salted, data))

    def add_digests(self, digests: bytes) -> None:
        count = len(digests) // DIGEST_SIZE
        if self._blocks + count > self.params.data_blocks:
            raise UsageError(f"more than the expected {self.params.data_blocks} data blocks")
        self._digests.append(digests)
        self._blocks += count

    def finish(self) -> VerityTree:
        if self._blocks != self.params.data_blocks:
            raise UsageError(f"got {self._blocks} of {self.params.data_blocks} data blocks")
        return VerityTree.from_leaf_digests(self.params, b"".join(self._digests))


def first_digest_difference(a: bytes, b: bytes) -> int | None:
    """Index of the first 32-byte digest where ``a`` and ``b`` differ, None when equal."""
    if a == b:
        return None
    for index in range(max(len(a), len(b)) // DIGEST_SIZE + 1):
        span = slice(index * DIGEST_SIZE, (index + 1) * DIGEST_SIZE)
        if a[span] != b[span]:
            return index
    raise AssertionError("unequal byte strings must differ in some digest")


def check_hash_area(computed: VerityTree, tree_on_disk: bytes, expected_root: bytes) -> None:
    """Raise VerificationError naming the first problem, or return when everything matches.

    ``tree_on_disk`` is the tree part of the hash area (after any superblock). Order of checks, so
    that the message blames the right thing: each on-disk hash block must match its parent, from
    the expected root down (else that hash block is corrupt); then the data must match level 0
    (else a data block is corrupt); then the whole area must equal the recomputed one.
    """
    params = computed.params
    sizes, starts = params.level_sizes, params.level_starts()
    if len(tree_on_disk) != params.tree_blocks * BLOCK_SIZE:
        expected = params.tree_blocks * BLOCK_SIZE
        raise VerificationError(f"hash tree is {len(tree_on_disk)} bytes, expected {expected}")
    on_disk = [
        tree_on_disk[s * BLOCK_SIZE : (s + n) * BLOCK_SIZE]
        for s, n in zip(starts, sizes, strict=True)
    ]
    if computed.root_hash != expected_root and list(computed.levels) == on_disk:
        raise VerificationError(
            f"root hash mismatch: data and hash tree give {computed.root_hash.hex()}, "
            f"expected {expected_root.hex()}"
        )
    # Top-down, as the kernel trusts blocks: from the root to each level, so that a corrupt
    # block is blamed rather than its correct children.
    salted = salted_hash(params.salt)
    for level, blocks in reversed(list(enumerate(on_disk))):
        parents = on_disk[level + 1] if level + 1 < len(on_disk) else expected_root
        hashed = digest_blocks(salted, blocks)
        bad = first_digest_difference(hashed, parents[: len(hashed)])
        if bad is not None:
            where = "the root hash" if level + 1 == len(on_disk) else f"level {level + 1}"
            raise VerificationError(
                f"hash block {bad} of level {level} (tree block {starts[level] + bad}) "
                f"does not match {where}"
            )
    # With a single data block there is no tree: the root hash is that block's digest.
    digests_size = params.data_blocks * DIGEST_SIZE
    leaf = on_disk[0][:digests_size] if on_disk else expected_root
    recomputed = computed.levels[0][:digests_size] if on_disk else computed.root_hash
    bad = first_digest_difference(recomputed, leaf)
    if bad is not None:
        raise VerificationError(f"data block {bad} does not match its hash")
    for level, blocks in enumerate(on_disk):
        if blocks != computed.levels[level]:
            raise VerificationError(f"hash level {level} differs from the recomputed tree")

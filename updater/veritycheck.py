"""dm-verity verification in constant memory, block by block as the kernel trusts them.

``check_tree`` walks a format-1 hash area from the signed root hash down: the top hash block must
hash to the root, and every hash block of a level must hash to its entry in the level above; the
unused tail of each level's last block must be zero, as veritysetup writes it. ``check_data`` then
compares data blocks with their level-0 digests. When both pass, the hash area is byte for byte the
tree ``updater.verity`` would recompute from the data, and its root is the signed one: the same
verdict as ``verity.check_hash_area``, but holding one chunk of a level at a time instead of the
whole tree (8 MiB per GiB of data), so memory stays flat whatever the image size.

Reads are injected (``read(offset, size)``, offsets from the hash offset, every request a whole
number of 4096-byte blocks at a block boundary, as O_DIRECT needs): this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from updater.errors import VerificationError
from updater.verity import (
    BLOCK_SIZE,
    DIGEST_SIZE,
    HASHES_PER_BLOCK,
    VerityParams,
    digest_blocks,
    first_digest_difference,
    tree_offset,
)

if TYPE_CHECKING:
    from updater.verity import HashObject  # a Protocol, defined for type checking only

Read = Callable[[int, int], bytes]
"""``read(offset, size)``: ``size`` bytes of the hash area, ``offset`` from the hash offset."""

CHUNK_BLOCKS = 128 * 8  # hash blocks per read while walking a level: 4 MiB, 8 parent blocks


def _blocks(count: int) -> int:
    return -(-count // HASHES_PER_BLOCK)


class TreeReader:
    """Where each level lies in the hash area (after the superblock, the top level first)."""

    def __init__(self, params: VerityParams, read: Read) -> None:
        self.params = params
        self.sizes = params.level_sizes
        self.starts = params.level_starts()
        self._read = read

    def entries(self, level: int) -> int:
        """Digests held by ``level``: one per data block for level 0, else one per block below."""
        return self.params.data_blocks if level == 0 else self.sizes[level - 1]

    def blocks(self, level: int, first: int, count: int) -> bytes:
        offset = tree_offset(True) + (self.starts[level] + first) * BLOCK_SIZE
        return self._read(offset, count * BLOCK_SIZE)

    def digests(self, level: int, first: int, count: int) -> bytes:
        """Entries ``first .. first + count`` of ``level``; ``first`` is a multiple of 128."""
        assert first % HASHES_PER_BLOCK == 0
        raw = self.blocks(level, first // HASHES_PER_BLOCK, _blocks(count))
        return raw[: count * DIGEST_SIZE]


def check_tree(params: VerityParams, salted: HashObject, root: bytes, read: Read) -> None:
    """Raise VerificationError naming the highest hash block that is wrong, or the root."""
    tree = TreeReader(params, read)
    if not tree.sizes:
        return  # a single data block: no tree, the root is that block's digest (check_data)
    top = len(tree.sizes) - 1
    h = salted.copy()
    h.update(tree.blocks(top, 0, 1))
    if h.digest() != root:
        raise VerificationError(
            f"verity root hash mismatch: the hash tree gives {h.digest().hex()}, "
            f"the signed root hash is {root.hex()}"
        )
    for level in range(top, -1, -1):
        count = tree.sizes[level]
        used = (tree.entries(level) - (count - 1) * HASHES_PER_BLOCK) * DIGEST_SIZE
        if any(tree.blocks(level, count - 1, 1)[used:]):
            raise VerificationError(f"the unused tail of hash level {level} is not zero")
        if level == 0:
            return
        below = tree.sizes[level - 1]
        for first in range(0, below, CHUNK_BLOCKS):
            n = min(CHUNK_BLOCKS, below - first)
            hashed = digest_blocks(salted, tree.blocks(level - 1, first, n))
            bad = first_digest_difference(hashed, tree.digests(level, first, n))
            if bad is not None:
                raise VerificationError(
                    f"hash block {first + bad} of level {level - 1} does not match level {level}"
                )


def leaf_digests(params: VerityParams, root: bytes, read: Read, first: int, count: int) -> bytes:
    """The stored digests of data blocks ``first .. first + count`` (``first`` a multiple of 128):
    level-0 entries, or the root itself for an image of a single data block."""
    if params.data_blocks == 1:
        return root
    return TreeReader(params, read).digests(0, first, count)


def check_data(digests: bytes, stored: bytes, first: int) -> None:
    """Raise VerificationError when one of the ``digests`` of data blocks from ``first`` (computed
    with ``verity.digest_blocks``) differs from its ``stored`` one."""
    bad = first_digest_difference(digests, stored)
    if bad is not None:
        raise VerificationError(f"data block {first + bad} does not match its hash")

"""The constant-memory verity walk against ``verity.check_hash_area``, which recomputes the whole
tree: both must refuse exactly the same damaged hash areas, and the walk must only ever ask for
block-aligned reads of at most one chunk.

Trees are built from random leaf digests (the data does not matter to the tree walk), so three
levels cost nothing; ``verity`` itself is checked against a naive reference in test_verity.
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid

import pytest

from updater import veritycheck
from updater.errors import VerificationError
from updater.verity import (
    BLOCK_SIZE,
    Superblock,
    VerityParams,
    VerityTree,
    check_hash_area,
    digest_blocks,
    salted_hash,
)

SALT = b"\x01\x02"


def tree_for(blocks: int, seed: int = 0) -> tuple[VerityParams, VerityTree, bytearray]:
    rng = random.Random(seed)
    params = VerityParams(blocks, SALT)
    tree = VerityTree.from_leaf_digests(params, rng.randbytes(32 * blocks))
    area = bytearray(tree.hash_area(Superblock(params, uuid.UUID(int=seed).bytes)))
    return params, tree, area


class Reads:
    """The injected reader: serves the area and records every request."""

    def __init__(self, area: bytes | bytearray) -> None:
        self.area = area
        self.requests: list[tuple[int, int]] = []

    def __call__(self, offset: int, size: int) -> bytes:
        assert offset % BLOCK_SIZE == 0 and size % BLOCK_SIZE == 0 and size > 0
        assert offset + size <= len(self.area)
        self.requests.append((offset, size))
        return bytes(self.area[offset : offset + size])


def walk(params: VerityParams, area: bytes | bytearray, root: bytes) -> None:
    veritycheck.check_tree(params, salted_hash(params.salt), root, Reads(area))


def recompute(tree: VerityTree, area: bytes | bytearray, root: bytes) -> None:
    check_hash_area(tree, bytes(area[BLOCK_SIZE:]), root)


SIZES = [2, 127, 128, 129, 128 * 128, 128 * 128 + 1, 3 * 128 * 128 + 5]


@pytest.mark.parametrize("blocks", SIZES)
def test_intact_tree_passes(blocks: int) -> None:
    params, tree, area = tree_for(blocks)
    walk(params, area, tree.root_hash)
    recompute(tree, area, tree.root_hash)


@pytest.mark.parametrize("blocks", SIZES)
def test_every_damaged_block_is_refused_as_by_a_full_recomputation(blocks: int) -> None:
    params, tree, area = tree_for(blocks, seed=blocks)
    rng = random.Random(blocks)
    tree_blocks = (len(area) - BLOCK_SIZE) // BLOCK_SIZE
    sample = range(tree_blocks) if tree_blocks < 40 else rng.sample(range(tree_blocks), 40)
    for block in {0, tree_blocks - 1, *sample}:
        for offset in {0, rng.randrange(BLOCK_SIZE), BLOCK_SIZE - 1}:
            damaged = bytearray(area)
            damaged[BLOCK_SIZE + block * BLOCK_SIZE + offset] ^= 0x40
            with pytest.raises(VerificationError):
                recompute(tree, damaged, tree.root_hash)
            with pytest.raises(VerificationError):
                walk(params, damaged, tree.root_hash)


def test_blame_goes_to_the_highest_damaged_block() -> None:
    params, tree, area = tree_for(128 * 128 + 1)  # levels: 129, 2, 1 blocks; top stored first
    level0, level1 = BLOCK_SIZE * (1 + 1 + 2), BLOCK_SIZE * (1 + 1)
    damaged = bytearray(area)
    damaged[level0 + 5 * BLOCK_SIZE] ^= 1  # level-0 block 5
    with pytest.raises(VerificationError, match="hash block 5 of level 0 does not match level 1"):
        walk(params, damaged, tree.root_hash)
    damaged[level1 + BLOCK_SIZE + 7] ^= 1  # level-1 block 1, whose parent is the top block
    with pytest.raises(VerificationError, match="hash block 1 of level 1 does not match level 2"):
        walk(params, damaged, tree.root_hash)
    damaged[BLOCK_SIZE] ^= 1  # the top block
    with pytest.raises(VerificationError, match="verity root hash mismatch"):
        walk(params, damaged, tree.root_hash)


def test_nonzero_tail_of_a_level_is_refused() -> None:
    params, tree, area = tree_for(129)  # level 0: 2 blocks, the second holds one digest
    area[BLOCK_SIZE * 3 + 32] = 1
    # The tail is covered by level 1 as well: a recomputed tree refuses it; so must the walk,
    # even when the level above was made to match the damaged block.
    with pytest.raises(VerificationError):
        recompute(tree, area, tree.root_hash)
    salted = salted_hash(SALT)
    level0 = bytes(area[BLOCK_SIZE * 2 : BLOCK_SIZE * 4])
    area[BLOCK_SIZE : BLOCK_SIZE + 64] = digest_blocks(salted, level0)
    root = digest_blocks(salted, bytes(area[BLOCK_SIZE : BLOCK_SIZE * 2]))
    with pytest.raises(VerificationError, match="unused tail of hash level 0"):
        walk(params, area, root)


def test_wrong_salt_or_root_is_a_root_mismatch() -> None:
    params, tree, area = tree_for(1000)
    with pytest.raises(VerificationError, match="root hash mismatch"):
        walk(VerityParams(1000, b"other"), area, tree.root_hash)
    with pytest.raises(VerificationError, match=f"signed root hash is {'00' * 32}"):
        walk(params, area, bytes(32))


def test_reads_stay_within_one_chunk_whatever_the_size() -> None:
    params, tree, area = tree_for(3 * 128 * 128 + 5)  # 1.5 MiB of level 0
    reads = Reads(area)
    veritycheck.check_tree(params, salted_hash(SALT), tree.root_hash, reads)
    assert max(size for _, size in reads.requests) <= veritycheck.CHUNK_BLOCKS * BLOCK_SIZE
    # every hash block is read about twice (as a child, then as a parent): nothing is kept
    assert sum(size for _, size in reads.requests) < 2.1 * (len(area) - BLOCK_SIZE)


def test_data_blocks_against_their_leaves() -> None:
    data = os.urandom(300 * BLOCK_SIZE)
    params = VerityParams(300, SALT)
    salted = salted_hash(SALT)
    digests = b"".join(
        hashlib.sha256(SALT + data[i : i + 4096]).digest() for i in range(0, len(data), 4096)
    )
    tree = VerityTree.from_leaf_digests(params, digests)
    area = tree.hash_area(Superblock(params, uuid.UUID(int=0).bytes))
    stored = veritycheck.leaf_digests(params, tree.root_hash, Reads(area), 128, 172)
    assert stored == digests[128 * 32 :]
    veritycheck.check_data(digest_blocks(salted, data[128 * 4096 :]), stored, 128)
    damaged = bytearray(data)
    damaged[200 * 4096 + 17] ^= 1
    with pytest.raises(VerificationError, match="data block 200 does not match its hash"):
        veritycheck.check_data(digest_blocks(salted, damaged[128 * 4096 :]), stored, 128)


def test_single_data_block_has_no_tree_and_the_root_is_its_digest() -> None:
    block = os.urandom(BLOCK_SIZE)
    params = VerityParams(1, SALT)
    root = hashlib.sha256(SALT + block).digest()
    area = Superblock(params, uuid.UUID(int=0).bytes).encode()
    walk(params, area, root)
    stored = veritycheck.leaf_digests(params, root, Reads(area), 0, 1)
    veritycheck.check_data(digest_blocks(salted_hash(SALT), block), stored, 0)
    with pytest.raises(VerificationError, match="data block 0"):
        veritycheck.check_data(digest_blocks(salted_hash(SALT), bytes(BLOCK_SIZE)), stored, 0)

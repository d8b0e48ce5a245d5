"""Small USR images in the release format, and byte sources, for the slot writer's tests.

An image is data blocks, then a dm-verity superblock and tree made by ``updater.verity`` (itself
checked against a naive reference and against veritysetup in its own tests), compressed into
1 MiB zstd frames by ``updater.frames``. The signed facts are computed here with hashlib from the
bytes, never by the writer under test.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator

from updater import frames
from updater.errors import TransportError
from updater.records import dataclass, field, replace
from updater.slotwrite import ImageFacts
from updater.verity import BLOCK_SIZE, Superblock, VerityParams, VerityTreeBuilder

MiB = 1 << 20
FRAME = MiB


@dataclass(frozen=True)
class ReleaseImage:
    raw: bytes  # what the slot must hold afterwards
    compressed: bytes
    facts: ImageFacts

    def frame_start(self, index: int) -> int:
        return self.facts.table.compressed_offset(index)

    def data_end(self, frames_done: int) -> int:
        """Uncompressed bytes covered by the first ``frames_done`` frames."""
        return self.facts.table.uncompressed_offset(frames_done)

    def with_facts(self, **changes: object) -> ReleaseImage:
        return replace(self, facts=replace(self.facts, **changes))


def make_data(blocks: int, seed: int) -> bytes:
    """Random blocks (incompressible), zero blocks and text-like blocks, as a filesystem has."""
    rng = random.Random(seed)
    kinds = [
        lambda: rng.randbytes(BLOCK_SIZE),
        lambda: bytes(BLOCK_SIZE),
        lambda: bytes(rng.choice(b"abcdefgh \n") for _ in range(64)) * 64,
    ]
    return b"".join(kinds[i % 3]() for i in range(blocks))


def make_image(
    data_blocks: int = 1100,
    *,
    salt: bytes = b"release salt",
    seed: int = 1,
    superblock: Superblock | None = None,
    frame_size: int = FRAME,
) -> ReleaseImage:
    """1100 blocks: 4.3 MiB of data and 40 KiB of hash area, five 1 MiB frames.
    ``superblock`` replaces the true one (a lying image); the signed root is always the tree's."""
    data = make_data(data_blocks, seed)
    params = VerityParams(data_blocks, salt)
    builder = VerityTreeBuilder(params)
    builder.update(data)
    tree = builder.finish()
    header = superblock or Superblock(params, uuid.UUID(int=seed).bytes)
    raw = data + tree.hash_area(header)
    chunks = [raw[i : i + 3 * MiB] for i in range(0, len(raw), 3 * MiB)]
    table, compressed = frames.table_of(
        frames.compress_frames(chunks, frame_size, level=3), frame_size
    )
    facts = ImageFacts(
        compressed_size=len(compressed),
        sha256=hashlib.sha256(compressed).hexdigest(),
        table=table,
        root_hash=tree.root_hash,
        hash_offset=len(data),
    )
    return ReleaseImage(raw, compressed, facts)


@dataclass
class MemorySource:
    """The compressed image from memory, in ``chunk``-byte pieces; ``fail_at`` (an absolute byte
    offset) raises ``error`` once the bytes before it were yielded, as a reset connection would."""

    data: bytes
    chunk: int = 256 << 10
    fail_at: int | None = None
    error: Exception = field(default_factory=lambda: TransportError("connection reset by peer"))
    opened: list[int] = field(default_factory=list)
    closed: int = 0

    def open(self, start: int) -> Iterator[bytes]:
        self.opened.append(start)
        try:
            end = len(self.data) if self.fail_at is None else min(self.fail_at, len(self.data))
            for offset in range(start, end, self.chunk):
                yield self.data[offset : min(offset + self.chunk, end)]
            if self.fail_at is not None:
                raise self.error
        finally:
            self.closed += 1


class EndlessSource:
    """The signed bytes, then zeros forever: the endless-data attack."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.extra_chunks = 0

    def open(self, start: int) -> Iterator[bytes]:
        yield self.data[start:]
        while True:
            self.extra_chunks += 1
            yield bytes(64 << 10)


class UnopenedSource:
    """A source the writer must not touch (it refuses before fetching)."""

    def open(self, start: int) -> Iterator[bytes]:
        raise AssertionError(f"the source was opened at {start}")

"""The read-back: the written slot read again past the page cache, against the signed root hash.

Order, so that the message blames the right thing: the verity superblock at the signed hash
offset (its data block count must be that offset's), then the hash area from the signed root
down (``veritycheck.check_tree``), then every data block against its level-0 digest. Together
they mean that the slot holds exactly the image whose root hash was signed: a lying superblock, a
wrong salt, a tree that does not match the data, and bytes changed on the device after they were
written all fail here.

Data digests are computed by worker processes, one per core, each reading its own 64 MiB ranges
through its own O_DIRECT descriptor; only digests (1/128 of the data) come back. Processes, not
threads, for the reason ``updater.verityfile`` measured (the GIL is taken back after every
4 KiB block). Memory is one read buffer per worker and one chunk of a hash level: flat, whatever
the image size. Nothing is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager

from updater.errors import VerificationError
from updater.slotwrite.blockio import SlotIO, aligned_buffer
from updater.slotwrite.facts import ImageFacts
from updater.slotwrite.region import Target
from updater.verity import BLOCK_SIZE, Superblock, digest_blocks, salted_hash
from updater.veritycheck import check_data, check_tree, leaf_digests
from updater.verityfile import process_pool

READ_SIZE = 8 << 20  # O_DIRECT reads: larger requests keep a virtual disk's queue busy
RANGE_SIZE = 64 << 20  # one task per range: 512 KiB of digests back


def range_digests(target: Target, salt: bytes, start: int, size: int) -> bytes:
    """Digests of the data blocks in ``[start, start + size)`` of the slot, read past the page
    cache; runs in a worker process."""
    salted = salted_hash(salt)
    buffer = aligned_buffer(min(READ_SIZE, size))
    digests = []
    with SlotIO(target, write=False) as io, memoryview(buffer) as whole:
        for offset in range(start, start + size, READ_SIZE):
            with whole[: min(READ_SIZE, start + size - offset)] as view:
                io.read(view, offset)
                digests.append(digest_blocks(salted, view))
    buffer.close()
    return b"".join(digests)


class _HashArea:
    """Block-aligned reads of the hash area, each into a fresh aligned buffer (they are small)."""

    def __init__(self, io: SlotIO, hash_offset: int) -> None:
        self.io, self.hash_offset = io, hash_offset

    def read(self, offset: int, size: int) -> bytes:
        buffer = aligned_buffer(size)
        with memoryview(buffer) as view:
            self.io.read(view, self.hash_offset + offset)
            data = bytes(view)
        buffer.close()
        return data


@contextmanager
def workers(count: int) -> Iterator[Executor | None]:
    """The read-back's worker processes (None: hash in this process), started at once: forked
    before the stream starts its threads and allocates its buffers, they copy neither, and
    fork stays safe (``verityfile.process_pool`` falls back to forkserver when threads exist)."""
    pool = process_pool(count) if count > 1 else None
    if pool is None:
        yield None
        return
    try:
        pool.submit(int).result()  # a process pool forks its workers on the first task
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def verify(
    target: Target,
    image: ImageFacts,
    pool: Executor | None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Raise VerificationError (the slot is not the signed image) or DeviceError (it cannot be
    read); ``progress`` gets the data bytes checked so far."""
    try:
        _verify(target, image, pool, progress)
    except VerificationError as exc:
        raise VerificationError(f"{target.path} read back: {exc.message}") from None


def _verify(
    target: Target,
    image: ImageFacts,
    pool: Executor | None,
    progress: Callable[[int], None] | None,
) -> None:
    data_size = image.hash_offset
    ranges = [(s, min(RANGE_SIZE, data_size - s)) for s in range(0, data_size, RANGE_SIZE)]
    with SlotIO(target, write=False) as io:
        area = _HashArea(io, image.hash_offset)
        params = Superblock.decode(area.read(0, BLOCK_SIZE)).params
        if params.data_blocks != image.data_blocks:
            raise VerificationError(
                f"the verity superblock counts {params.data_blocks} data blocks, "
                f"the signed hash offset {image.data_blocks}"
            )
        futures: list[Future[bytes]] = []
        if pool is not None and len(ranges) > 1:
            futures = [pool.submit(range_digests, target, params.salt, *r) for r in ranges]
            results: Iterable[bytes] = (future.result() for future in futures)
        else:
            results = (range_digests(target, params.salt, *r) for r in ranges)
        try:
            # The tree first, while the workers hash data: a bad hash block is the better blame.
            check_tree(params, salted_hash(params.salt), image.root_hash, area.read)
            for (start, size), digests in zip(ranges, results, strict=True):
                first = start // BLOCK_SIZE
                count = size // BLOCK_SIZE
                stored = leaf_digests(params, image.root_hash, area.read, first, count)
                check_data(digests, stored, first)
                if progress is not None:
                    progress(start + size)
        finally:
            for future in futures:
                future.cancel()  # after a mismatch the rest is not worth hashing

"""dm-verity on files and block devices: read data, write the hash area, verify a partition.

The tree itself is computed by ``updater.verity``; this module only moves bytes. Reads are big
(1 MiB) ``preadv`` calls into a reused buffer. The data digests are computed by one process per
core (this one and forked children), each on its own 8 MiB ranges. Not threads: hashlib does
release the GIL for each 4 KiB block, but handing the GIL back and forth 262144 times per GiB
made two threads slower than one (0.91 s against 0.73 s for 1 GiB on a 2-core VM), while two
processes take 0.44 s. Not a multiprocessing pool either: importing and starting one cost more
than hashing 256 MiB.

Hash offsets must be multiples of 4096 (veritysetup accepts 512); a partition layout never needs
anything else, and it keeps every tree block aligned. This module does not print anything.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from collections.abc import Callable, Generator, Iterable, Iterator

from updater.errors import DeviceError, UsageError, VerificationError
from updater.guid import Guid, random_guid
from updater.records import dataclass
from updater.verity import (
    BLOCK_SIZE,
    DIGEST_SIZE,
    Superblock,
    VerityParams,
    VerityTree,
    VerityTreeBuilder,
    block_views,
    blocks_for_size,
    check_hash_area,
    digest_each,
    hash_area_size,
    salted_hash,
    tree_offset,
)

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` after each chunk of data is read."""

DEFAULT_SALT_SIZE = 32  # what veritysetup picks when no salt is given
# Big enough that per-call overhead vanishes, small enough that the block just read is hashed from
# the core's L2 cache (2 MiB per core on the development VM; 4 MiB reads cost 2-3% more CPU).
READ_SIZE = 1 << 20
RANGE_SIZE = 8 << 20  # one task per range; its 64 KiB of digests fit a default pipe
PIPE_SIZE = 1 << 20  # Linux's default limit for F_SETPIPE_SZ without privileges


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def random_salt() -> bytes:
    import secrets  # here: only a format without --salt needs it (start-up time)

    return secrets.token_bytes(DEFAULT_SALT_SIZE)


@dataclass(frozen=True)
class FormatResult:
    params: VerityParams
    root_hash: bytes
    hash_offset: int
    superblock: Superblock | None

    def to_json(self) -> dict[str, object]:
        """The stable ``updater verity format --json`` contract."""
        return {
            "root_hash": self.root_hash.hex(),
            "salt": self.params.salt.hex(),
            "data_blocks": self.params.data_blocks,
            "hash_offset": self.hash_offset,
        }


def device_size(path: str) -> int:
    """Size in bytes of a regular file or a block device (whose st_size is 0)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _read_exactly(fd: int, view: memoryview, offset: int, what: str) -> None:
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise DeviceError(f"{what} ends at byte {offset + done}, needed {offset + len(view)}")
        done += count


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _ranges_digests(
    path: str, salt: bytes, ranges: list[tuple[int, int]]
) -> Generator[bytes, None, None]:
    """The digests of the data blocks of each ``(start, size)`` range, one range at a time. One
    descriptor and one read buffer serve all of them (a fresh buffer per range costs its
    page faults and zeroing again)."""
    salted = salted_hash(salt)
    buffer = memoryview(bytearray(min(READ_SIZE, max((size for _, size in ranges), default=0))))
    blocks = block_views(buffer)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, size in ranges:
            digests = []
            for offset in range(start, start + size, READ_SIZE):
                count = min(READ_SIZE, start + size - offset)
                _read_exactly(fd, buffer[:count], offset, path)
                digests.append(digest_each(salted, blocks[: count // BLOCK_SIZE]))
            yield b"".join(digests)
    finally:
        os.close(fd)


def _forked_digests(
    path: str, salt: bytes, ranges: list[tuple[int, int]], workers: int
) -> Iterator[bytes]:
    """Digests of each range, in order, over ``workers`` processes: this one hashes ranges 0,
    ``workers``, ``2 * workers``, ...; forked child ``w`` hashes ranges ``w``, ``w + workers``,
    ... and writes each range's digests to its own pipe, which holds at least one range's worth,
    so a child runs ahead while this process hashes its own share. A bare ``os.fork`` rather than
    a multiprocessing pool: importing and starting a pool costs more than hashing a few hundred
    MiB, and the children share nothing but a pipe. A failing child exits non-zero; this process
    then stops with a DeviceError. Every child is reaped on any way out, and killed first unless
    all its digests arrived (it is then exiting by itself)."""
    children: list[tuple[int, int]] = []
    finished = False
    mine = _ranges_digests(path, salt, ranges[0::workers])
    try:
        for w in range(1, workers):
            read_end, write_end = os.pipe()
            try:  # more room than one range needs, if allowed
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            pid = os.fork()
            if pid == 0:  # the child: hash, write, and leave without running any cleanup
                status = 1
                try:
                    os.close(read_end)
                    for digests in _ranges_digests(path, salt, ranges[w::workers]):
                        _write_all_fd(write_end, digests)
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_end)
            children.append((pid, read_end))
        for i, (_, size) in enumerate(ranges):
            if i % workers == 0:
                yield next(mine)
                continue
            _, read_end = children[i % workers - 1]
            want = size // BLOCK_SIZE * DIGEST_SIZE
            data = _read_all_fd(read_end, want)
            if len(data) != want:
                raise DeviceError(f"hashing {path} failed in a worker process")
            yield data
        finished = True
    finally:
        mine.close()
        for pid, read_end in children:
            os.close(read_end)
            if not finished:
                _kill(pid)
            os.waitpid(pid, 0)


def _kill(pid: int) -> None:
    import signal  # here: only a failed or interrupted run kills a worker (start-up time)

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all_fd(fd: int, size: int) -> bytes:
    parts = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _single_threaded() -> bool:
    """fork copies only the calling thread: with other threads alive a child could inherit a
    lock one of them held, so hashing then stays in this process. This project starts threads
    only through ``threading``; when nothing has imported it, there is one thread (and importing
    it just to ask would cost start-up time)."""
    threading = sys.modules.get("threading")
    return threading is None or bool(threading.active_count() == 1)


def compute_tree(
    path: str,
    params: VerityParams,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> VerityTree:
    """Hash the first ``params.data_blocks`` blocks of ``path`` into a VerityTree.

    Each worker process reads and hashes its own contiguous ranges of the file, so only digests
    (1/128 of the data) cross process boundaries.
    """
    workers = workers or default_workers()
    total = params.data_size
    if device_size(path) < total:
        raise DeviceError(f"{path} is {device_size(path)} bytes, shorter than {total} of data")
    ranges = [(start, min(RANGE_SIZE, total - start)) for start in range(0, total, RANGE_SIZE)]
    builder = VerityTreeBuilder(params)

    def collect(results: Iterable[bytes]) -> None:
        done = 0
        for (_, size), digests in zip(ranges, results, strict=True):
            builder.add_digests(digests)
            done += size
            if progress is not None:
                progress(done, total)

    workers = min(workers, len(ranges))
    if workers > 1 and _single_threaded():
        collect(_forked_digests(path, params.salt, ranges, workers))
    else:
        collect(_ranges_digests(path, params.salt, ranges))
    return builder.finish()


def _check_hash_offset(data_path: str, hash_path: str, data_size: int, offset: int) -> None:
    if offset < 0 or offset % BLOCK_SIZE:
        raise UsageError(f"hash offset {offset} is not a non-negative multiple of {BLOCK_SIZE}")
    if os.path.exists(hash_path) and os.path.samefile(data_path, hash_path):
        if offset < data_size:
            raise UsageError(
                f"hash offset {offset} is inside the {data_size} bytes of data",
                hint="the hash area must start after the data",
            )


def format_file(
    data_path: str,
    hash_path: str,
    *,
    hash_offset: int = 0,
    data_blocks: int | None = None,
    salt: bytes | None = None,
    superblock: bool = True,
    volume_uuid: Guid | bytes | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> FormatResult:
    """Compute the tree of ``data_path`` and write the hash area to ``hash_path`` at the offset.

    ``data_blocks`` defaults to the whole data file; ``salt`` to 32 random bytes; the hash file is
    created when missing. Like ``veritysetup format DATA HASH``.
    """
    if data_blocks is None:
        data_blocks = blocks_for_size(device_size(data_path))
    params = VerityParams(data_blocks, random_salt() if salt is None else salt)
    _check_hash_offset(data_path, hash_path, params.data_size, hash_offset)
    tree = compute_tree(data_path, params, workers=workers, progress=progress)
    volume = random_guid(os.urandom(16)) if volume_uuid is None else volume_uuid
    header = Superblock(params, volume) if superblock else None
    area = tree.hash_area(header)
    fd = os.open(hash_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
            if hash_offset + len(area) > size:
                raise DeviceError(
                    f"{hash_path} is {size} bytes, the hash area needs {hash_offset + len(area)}"
                )
        _write_all(fd, area, hash_offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return FormatResult(params, tree.root_hash, hash_offset, header)


def format_in_place(
    path: str,
    hash_offset: int,
    *,
    salt: bytes | None = None,
    superblock: bool = True,
    volume_uuid: Guid | bytes | None = None,
    progress: Progress | None = None,
) -> FormatResult:
    """The first ``hash_offset`` bytes of ``path`` are data; the hash area is written right there.

    Like ``veritysetup format PATH PATH --hash-offset N --data-blocks N/4096``.
    """
    return format_file(
        path,
        path,
        hash_offset=hash_offset,
        data_blocks=blocks_for_size(hash_offset),
        salt=salt,
        superblock=superblock,
        volume_uuid=volume_uuid,
        progress=progress,
    )


def _read_hash_area(fd: int, hash_path: str, offset: int, size: int) -> bytes:
    buffer = bytearray(size)
    try:
        _read_exactly(fd, memoryview(buffer), offset, hash_path)
    except DeviceError as exc:
        raise VerificationError(f"hash area is truncated: {exc.message}") from None
    return bytes(buffer)


def verify_file(
    data_path: str,
    hash_path: str,
    root_hash: bytes,
    *,
    hash_offset: int = 0,
    data_blocks: int | None = None,
    salt: bytes | None = None,
    superblock: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
) -> VerityParams:
    """Raise VerificationError unless data, hash area, superblock and root hash all agree.

    With a superblock, salt and data block count come from it (and must equal ``salt`` and
    ``data_blocks`` when those are given); without one, ``salt`` is required. The whole tree is
    recomputed from the data and compared with the on-disk one block for block.
    """
    if data_blocks is None:
        data_blocks = blocks_for_size(device_size(data_path))
    _check_hash_offset(data_path, hash_path, data_blocks * BLOCK_SIZE, hash_offset)
    fd = os.open(hash_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if superblock:
            header = Superblock.decode(_read_hash_area(fd, hash_path, hash_offset, BLOCK_SIZE))
            params = header.params
            if salt is not None and salt != params.salt:
                raise VerificationError(
                    f"superblock salt is {params.salt.hex() or '-'}, expected {salt.hex() or '-'}"
                )
            if params.data_blocks != data_blocks:
                raise VerificationError(
                    f"superblock says {params.data_blocks} data blocks, expected {data_blocks}"
                )
        elif salt is None:
            raise UsageError("without a superblock the salt must be given")
        else:
            params = VerityParams(data_blocks, salt)
        start = hash_offset + tree_offset(superblock)
        size = hash_area_size(params, superblock) - tree_offset(superblock)
        on_disk = _read_hash_area(fd, hash_path, start, size)
    finally:
        os.close(fd)
    tree = compute_tree(data_path, params, workers=workers, progress=progress)
    check_hash_area(tree, on_disk, root_hash)
    return params


def verify_in_place(
    path: str,
    root_hash: bytes,
    hash_offset: int,
    *,
    salt: bytes | None = None,
    superblock: bool = True,
    progress: Progress | None = None,
) -> VerityParams:
    """Verify a partition formatted by ``format_in_place`` (data first, hash area at the offset)."""
    return verify_file(
        path,
        path,
        root_hash,
        hash_offset=hash_offset,
        data_blocks=blocks_for_size(hash_offset),
        salt=salt,
        superblock=superblock,
        progress=progress,
    )

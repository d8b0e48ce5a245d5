"""Disk I/O for the GUID partition table: open a disk or image file, read the table, apply writes.

This adapter knows sectors and files only; the format rules live in ``updater.gptformat`` and the
A/B meaning of attribute bits in ``updater.slots``. It does not create partition layouts (see
``updater.layout``) and never touches partition contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator

from updater import gptformat
from updater.errors import DeviceError, GptError
from updater.records import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

BLKSSZGET = 0x1268  # logical sector size of a block device
BLKGETSIZE64 = 0x80081272  # size in bytes of a block device
SECTOR_SIZES = (512, 4096)


@dataclass
class Disk:
    """An open disk or image file. Use ``open_disk``; close with ``close()`` or ``with``."""

    path: str
    fd: int
    sector_size: int
    total_sectors: int
    is_block_device: bool

    def read(self, lba: int, count: int) -> bytes:
        want = count * self.sector_size
        data = os.pread(self.fd, want, lba * self.sector_size)
        if len(data) != want:
            raise DeviceError(f"{self.path}: short read at LBA {lba}")
        return data

    def write(self, lba: int, data: bytes) -> None:
        if len(data) % self.sector_size:
            raise DeviceError("write is not a whole number of sectors")
        done = os.pwrite(self.fd, data, lba * self.sector_size)
        if done != len(data):
            raise DeviceError(f"{self.path}: short write at LBA {lba}")

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe_sector_size(fd: int, size: int) -> int:
    """Image files carry no sector size: find the GPT header at LBA 1 (or the backup at the end)."""
    for ss in SECTOR_SIZES:
        if size >= 3 * ss and os.pread(fd, 8, ss) == gptformat.SIGNATURE:
            return ss
    for ss in SECTOR_SIZES:
        if size >= 3 * ss and size % ss == 0 and os.pread(fd, 8, size - ss) == gptformat.SIGNATURE:
            return ss
    return 512


def open_disk(path: str, *, writable: bool = False, sector_size: int | None = None) -> Disk:
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DeviceError(f"{path}: no such disk or image file") from None
    except PermissionError:
        raise DeviceError(f"{path}: permission denied", hint="run as root") from None
    try:
        st = os.fstat(fd)
        block = stat.S_ISBLK(st.st_mode)
        if block:
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            ss = sector_size or struct.unpack("I", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
            ss = sector_size or _probe_sector_size(fd, size)
        else:
            raise DeviceError(f"{path}: not a block device or regular file")
    except BaseException:
        os.close(fd)
        raise
    return Disk(path, fd, ss, size // ss, block)


def read_table(disk: Disk) -> gptformat.GptTable:
    try:
        return gptformat.read_table(disk)
    except GptError as exc:
        raise GptError(f"{disk.path}: {exc.message}") from None


def apply_plan(disk: Disk, plan: gptformat.WritePlan) -> int:
    """Write each phase and make it durable before the next; return the sectors written.

    The sync between phases matters: without it the block layer may reorder the primary's sectors
    ahead of the backup's and a power cut could leave both copies half written.
    """
    written = 0
    for phase in plan.phases:
        if not phase:
            continue
        for lba, data in phase:
            disk.write(lba, data)
            written += 1
        disk.sync()
    return written


@contextlib.contextmanager
def locked(path: str, *, writable: bool) -> Iterator[Disk]:
    """Open ``path`` and hold an exclusive advisory lock for a read-modify-write cycle."""
    disk = open_disk(path, writable=writable)
    try:
        fcntl.flock(disk.fd, fcntl.LOCK_EX if writable else fcntl.LOCK_SH)
        yield disk
    finally:
        disk.close()


def with_table(path: str, use: Callable[[Disk, gptformat.GptTable], T], *, writable: bool) -> T:
    """Open ``path``, lock it (exclusive when ``writable``, else shared), read its table, and
    return ``use(disk, table)``, run under the lock: one read-modify-write cycle, in one call.
    ``use`` writes through ``apply_plan(disk, ...)``; the disk is closed afterwards."""
    with locked(path, writable=writable) as disk:
        return use(disk, read_table(disk))


def read(path: str) -> gptformat.GptTable:
    """The table of ``path``, read under a shared lock (nothing written)."""
    return with_table(path, lambda disk, table: table, writable=False)


def repair(path: str) -> int:
    """Rewrite a damaged or stale copy from the one in use, then read both copies back: a
    repair that did not leave two valid, equal copies is an error, not a success."""
    with locked(path, writable=True) as disk:
        written = apply_plan(disk, gptformat.plan_repair(read_table(disk)))
        after = read_table(disk)
        if after.needs_repair:
            primary = after.primary.problem or "valid"
            backup = after.backup.problem or ("stale" if after.backup_stale else "valid")
            raise GptError(
                f"{path}: {written} sectors written, but the table still needs repair "
                f"(primary: {primary}; backup: {backup})"
            )
        return written

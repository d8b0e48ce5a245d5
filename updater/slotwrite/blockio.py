"""Opening a slot for large aligned writes and for reads that bypass the page cache.

Writes and reads use O_DIRECT where the device or filesystem takes it: the image does not pass
through (and evict) the page cache of the running system, and a read after the write comes from
the device, not from memory. Where O_DIRECT is refused (tmpfs before Linux 6.6, a range that is
not aligned to the device's logical block size) the same calls run buffered, and the page cache is
dropped after every fdatasync (posix_fadvise DONTNEED), so a later read still goes to the device.
Buffers are anonymous mmaps: page-aligned, as O_DIRECT needs, and returned to the kernel when
closed instead of staying in the Python heap.

A block device is opened with O_EXCL: the kernel then refuses it (EBUSY) while it is mounted or
held by device-mapper, whatever our own checks missed. This module decides nothing about what to
write; ``updater.slotwrite.region`` decides where.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat

from updater.errors import DeviceError
from updater.slotwrite.region import Target

O_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_buffer(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _open(target: Target, flags: int) -> tuple[int, bool]:
    """Open with O_DIRECT when possible; returns the descriptor and whether it is direct."""
    for direct in (True, False) if O_DIRECT else (False,):
        try:
            return os.open(target.path, flags | (O_DIRECT if direct else 0)), direct
        except OSError as exc:
            if exc.errno == errno.EINVAL and direct:
                continue  # this filesystem has no O_DIRECT
            if exc.errno == errno.EBUSY:
                raise DeviceError(
                    f"{target.path} is in use (mounted, or held by another device)"
                ) from None
            raise DeviceError(f"cannot open {target.path}: {exc.strerror}") from None
    raise AssertionError("unreachable: the buffered open either returns or raises")


class SlotIO:
    """One open slot; offsets are relative to the region's start."""

    def __init__(self, target: Target, *, write: bool) -> None:
        self.target = target
        flags = os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
        if write and target.block:
            flags |= os.O_EXCL
        self.fd, self.direct = _open(target, flags)
        if not self._is_target(os.fstat(self.fd)):
            os.close(self.fd)
            raise DeviceError(f"{target.path} changed after it was checked")
        if not self.direct:
            self.drop_cache()

    def _is_target(self, st: os.stat_result) -> bool:
        """The path was resolved (and checked against the booted slot) before it was opened: it
        must still name the same device or file."""
        if self.target.rdev is not None:
            return stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (
                self.target.rdev
            )
        return self.target.extent.base == ("file", st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SlotIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _buffered(self) -> None:
        """Leave O_DIRECT for the rest of this descriptor's life: the kernel refused an aligned
        request (EINVAL), which happens on devices with a larger logical block size than the
        region's alignment."""
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
        self.direct = False

    def _io_error(self, exc: OSError, verb: str, offset: int) -> DeviceError:
        where = self.target.offset + offset
        return DeviceError(f"cannot {verb} {self.target.path} at byte {where}: {exc.strerror}")

    def write(self, data: memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``; short writes are continued, errors are typed."""
        base = self.target.offset
        while data:
            try:
                count = os.pwrite(self.fd, data, base + offset)
            except OSError as exc:
                if exc.errno == errno.EINVAL and self.direct:
                    self._buffered()
                    continue
                raise self._io_error(exc, "write", offset) from None
            if count == 0:
                raise DeviceError(f"{self.target.path} accepts no more bytes at {base + offset}")
            data = data[count:]
            offset += count

    def read(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` from ``offset``; the region is known to be long enough."""
        base = self.target.offset
        done = 0
        while done < len(view):
            try:
                count = os.preadv(self.fd, [view[done:]], base + offset + done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and self.direct:
                    self._buffered()
                    self.drop_cache()
                    continue
                raise self._io_error(exc, "read", offset + done) from None
            if count == 0:
                raise DeviceError(f"{self.target.path} ends at byte {base + offset + done}")
            done += count

    def sync(self) -> None:
        """Make everything written so far durable; without O_DIRECT also drop it from the cache."""
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise self._io_error(exc, "sync", 0) from None
        if not self.direct:
            self.drop_cache()

    def drop_cache(self) -> None:
        # Only clean pages are dropped: callers sync first. Harmless on a fresh descriptor.
        os.posix_fadvise(self.fd, self.target.offset, self.target.size, os.POSIX_FADV_DONTNEED)

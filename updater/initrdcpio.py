"""A small newc ("070701") cpio archive built in memory: the secondary initrd with the boot facts.

Pure: entries in, bytes out. This module does not write files and does not compress; the kexec
adapter puts the archive after the slot's initrd.

Why this works, from the kernel's initramfs unpacker (init/initramfs.c):

- The kernel unpacks concatenated archives one after another into the same rootfs, so files of a
  later archive are added to (or replace) those of an earlier one.
- Between archives it skips zero bytes, but a cpio header is only accepted at an offset that is a
  multiple of 4 from the start of the initrd ("broken padding" otherwise). This archive is padded
  to 512 bytes, so whatever follows it stays aligned; the initrd it is appended to must end
  4-byte aligned too (``append_archive`` pads it).
- A compressed archive (gzip, zstd, ...) may be followed by an uncompressed one: the decompressor
  reports how many input bytes it consumed and the unpacker continues right after them.
- Parent directories are not created implicitly, so a directory entry must come before the files
  in it (unless an earlier archive already made it).
- Regular files with ``nlink >= 2`` are matched up as hard links by inode number, so every entry
  gets its own inode number and files have ``nlink`` 1.

Reproducible: mtime, uid and gid are 0 and inode numbers count from 1, so the same facts always
give the same bytes (and the same measurement, for measured boot).
"""

from __future__ import annotations

import stat
from collections.abc import Sequence

from updater.cmdline import BootFacts, facts_env
from updater.errors import UsageError
from updater.records import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
BLOCK = 512  # archives are padded to this; 4 would do for the kernel, 512 is what cpio(1) writes
ALIGN = 4  # newc pads header+name and file data to 4 bytes; the kernel wants archives aligned
FACTS_PATH = "etc/updater/boot-facts.env"


@dataclass(frozen=True)
class CpioEntry:
    """One member: ``mode`` includes the file type bits (``stat.S_IFDIR`` or ``stat.S_IFREG``)."""

    name: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if not self.name or self.name.startswith("/") or "\0" in self.name:
            raise UsageError(f"cpio member name must be a relative path: {self.name!r}")
        if any(p in ("", ".", "..") for p in parts) or self.name == TRAILER:
            raise UsageError(f"cpio member name must be a plain relative path: {self.name!r}")
        if not (stat.S_ISDIR(self.mode) or stat.S_ISREG(self.mode)):
            raise UsageError(f"cpio member {self.name!r}: only directories and regular files")
        if self.mode & ~(stat.S_IFMT(self.mode) | 0o7777):
            raise UsageError(f"cpio member {self.name!r}: mode {self.mode:o} has unknown bits")
        if stat.S_ISDIR(self.mode) and self.data:
            raise UsageError(f"cpio member {self.name!r}: a directory has no data")


def _pad(size: int, align: int) -> bytes:
    return b"\0" * (-size % align)


def _header(ino: int, mode: int, nlink: int, size: int, name: bytes) -> bytes:
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check;
    # namesize counts the terminating NUL; check is only used by the "070702" (crc) variant.
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise UsageError(f"cpio field value {value} does not fit in 32 bits")
    head = MAGIC + b"".join(b"%08X" % value for value in fields) + name + b"\0"
    return head + _pad(len(head), ALIGN)


def newc_archive(entries: Sequence[CpioEntry]) -> bytes:
    """The archive: each entry in the given order, the trailer, zero padding to ``BLOCK``."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise UsageError("cpio member names must be unique")
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1  # "." and the entry in its parent
        out += _header(ino, entry.mode, nlink, len(entry.data), entry.name.encode())
        out += entry.data + _pad(len(entry.data), ALIGN)
    # The trailer: like cpio(1), all zero except nlink 1 and the name.
    out += _header(0, 0, 1, 0, TRAILER.encode())
    out += _pad(len(out), BLOCK)
    return bytes(out)


def facts_initrd(facts: BootFacts) -> bytes:
    """The secondary initrd carrying ``cmdline.facts_env`` at ``/etc/updater/boot-facts.env``."""
    return newc_archive(
        [
            CpioEntry.directory("etc"),
            CpioEntry.directory("etc/updater"),
            CpioEntry.file(FACTS_PATH, facts_env(facts).encode("ascii")),
        ]
    )


def padding_after(size: int) -> bytes:
    """Zero bytes to put after an initrd of ``size`` bytes so that an appended archive starts
    where the kernel accepts a cpio header (a multiple of 4 from the start)."""
    return _pad(size, ALIGN)


def append_archive(initrd: bytes, archive: bytes) -> bytes:
    """``initrd`` (compressed or not) followed by ``archive``, aligned for the kernel."""
    return initrd + padding_after(len(initrd)) + archive

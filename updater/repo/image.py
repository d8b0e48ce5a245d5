"""The facts a release states about its USR image, read from the image and its kernel.

A USR image is what the image builder makes: a squashfs or erofs filesystem, then at
``hash_offset`` (the filesystem size rounded up to 4096, as the initrd computes it) a dm-verity
superblock and hash tree; the kernel carries the root hash (64 lowercase hex at byte 0x40 on
x86_64, 512 on arm64), as Flatcar does. Before anything is published the whole tree is verified
against that root hash, so a release whose image, tree and kernel disagree is refused on the
publisher's machine rather than on every client.

This module reads files and verifies; it does not compress or write anything.
"""

from __future__ import annotations

import os

from updater.cmdline import USRHASH_OFFSETS, usrhash_from_kernel
from updater.errors import UsageError, VerificationError
from updater.records import dataclass
from updater.release import VerityFacts
from updater.verity import BLOCK_SIZE
from updater.verityfile import device_size, verify_in_place

SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_BYTES_USED = 40  # u64 in the superblock at offset 0
EROFS_SUPERBLOCK = 1024
EROFS_MAGIC = 0xE0F5E1E2
EROFS_BLKSZBITS = 12  # u8, within the superblock
EROFS_BLOCKS = 36  # u32, within the superblock: the image's size in blocks
HEAD_SIZE = 4096


@dataclass(frozen=True)
class UsrFacts:
    fs_type: str
    size: int  # bytes of the whole image: filesystem, padding, verity superblock and tree
    verity: VerityFacts


def filesystem(head: bytes) -> tuple[str, int]:
    """The filesystem type and size in bytes from the first 4096 bytes of an image."""
    if head[:4] == SQUASHFS_MAGIC and len(head) >= 48:
        return "squashfs", int.from_bytes(
            head[SQUASHFS_BYTES_USED : SQUASHFS_BYTES_USED + 8], "little"
        )
    sb = head[EROFS_SUPERBLOCK : EROFS_SUPERBLOCK + 64]
    if len(sb) == 64 and int.from_bytes(sb[:4], "little") == EROFS_MAGIC:
        bits = sb[EROFS_BLKSZBITS]
        if not 9 <= bits <= 16:
            raise UsageError(f"erofs block size 2^{bits} is not plausible")
        return "erofs", int.from_bytes(sb[EROFS_BLOCKS : EROFS_BLOCKS + 4], "little") << bits
    raise UsageError("not a squashfs or erofs image")


def hash_offset_of(fs_size: int) -> int:
    return -(-fs_size // BLOCK_SIZE) * BLOCK_SIZE


def inspect(usr: str, kernel: bytes, arch: str) -> UsrFacts:
    """Facts of the USR image at ``usr`` whose kernel is ``kernel``; raises UsageError for
    files that are not what ``repo add`` takes, VerificationError when the tree does not match
    the kernel's root hash."""
    root_hash = usrhash_from_kernel(kernel, arch)
    if root_hash is None:
        raise UsageError(
            f"the kernel carries no dm-verity root hash at byte {USRHASH_OFFSETS[arch]:#x} "
            f"({arch})",
            hint="write the root hash into the kernel image as the image builder does",
        )
    fd = os.open(usr, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, HEAD_SIZE, 0)
    finally:
        os.close(fd)
    fs_type, fs_size = filesystem(head)
    offset = hash_offset_of(fs_size)
    size = device_size(usr)
    if size % BLOCK_SIZE or not 0 < offset < size:
        raise UsageError(
            f"{usr}: {size} bytes, with a {fs_type} of {fs_size} bytes: no room for a dm-verity "
            "tree after the filesystem, or not a multiple of 4096"
        )
    try:
        verify_in_place(usr, bytes.fromhex(root_hash), offset)
    except VerificationError as exc:
        raise VerificationError(
            f"{usr} does not match the kernel's root hash {root_hash[:16]}...: {exc.message}"
        ) from None
    return UsrFacts(fs_type, size, VerityFacts(root_hash, offset))

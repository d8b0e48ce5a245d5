"""The signed facts of a USR image that the slot writer checks the bytes against.

Built by the update flow from the release's signed metadata (the TUF length and sha256 of
``usr.img.zst`` and its ``"updater"`` custom metadata), or by a test from an image it made. The
writer believes nothing else about the image. ``check`` bounds every field and refuses a table that
does not add up before a single byte is fetched; it does not parse metadata (``updater.release``
does) and does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re

from updater.errors import VerificationError
from updater.frames import FrameTable, MiB, frame_count
from updater.records import dataclass
from updater.verity import BLOCK_SIZE, DIGEST_SIZE, VerityParams, hash_area_size

MAX_FRAME_SIZE = 256 * MiB  # the decoder's window and a frame's download are bounded by this
MAX_IMAGE_SIZE = 1 << 40  # no USR partition comes near a TiB; a bound for arithmetic on lies
_HEX64 = re.compile(r"[0-9a-f]{64}")


def compress_bound(size: int) -> int:
    """The most a zstd frame of ``size`` content bytes can take (zstd.h's ZSTD_COMPRESSBOUND,
    headers included): a signed frame longer than this is not a frame of the release format."""
    small = 128 << 10
    return size + (size >> 8) + ((small - size) >> 11 if size < small else 0)


@dataclass(frozen=True)
class ImageFacts:
    compressed_size: int  # TUF length of usr.img.zst
    sha256: str  # TUF sha256 of usr.img.zst, lowercase hex
    table: FrameTable  # frame size, uncompressed size, (compressed length, sha256) per frame
    root_hash: bytes  # dm-verity root hash, 32 bytes
    hash_offset: int  # where the verity superblock and tree start, a multiple of 4096

    @property
    def size(self) -> int:
        """Uncompressed bytes: what the slot receives."""
        return self.table.size

    @property
    def data_blocks(self) -> int:
        return self.hash_offset // BLOCK_SIZE

    def check(self) -> None:
        """Raise VerificationError naming the first field that is out of bounds or inconsistent."""
        table = self.table
        if not _HEX64.fullmatch(self.sha256):
            raise VerificationError("image sha256 is not 64 lowercase hexadecimal digits")
        if len(self.root_hash) != DIGEST_SIZE:
            raise VerificationError(f"verity root hash is {len(self.root_hash)} bytes, not 32")
        if not 0 < table.frame_size <= MAX_FRAME_SIZE or table.frame_size % MiB:
            raise VerificationError(
                f"frame size {table.frame_size} is not a multiple of 1 MiB up to {MAX_FRAME_SIZE}"
            )
        if not 0 < table.size <= MAX_IMAGE_SIZE or table.size % BLOCK_SIZE:
            raise VerificationError(f"image size {table.size} is not a multiple of {BLOCK_SIZE}")
        if len(table.frames) != frame_count(table.size, table.frame_size):
            raise VerificationError(
                f"{len(table.frames)} frames cannot hold {table.size} bytes "
                f"in frames of {table.frame_size}"
            )
        for index, frame in enumerate(table.frames):
            bound = compress_bound(table.uncompressed_size(index))
            if not 0 < frame.compressed_size <= bound:
                raise VerificationError(
                    f"frame {index} is {frame.compressed_size} bytes compressed, "
                    f"impossible for {table.uncompressed_size(index)} bytes of content"
                )
            if not _HEX64.fullmatch(frame.sha256):
                raise VerificationError(f"frame {index} sha256 is not 64 lowercase hex digits")
        if table.compressed_size != self.compressed_size:
            raise VerificationError(
                f"the frames add up to {table.compressed_size} compressed bytes, "
                f"the signed length is {self.compressed_size}"
            )
        if not 0 < self.hash_offset < table.size or self.hash_offset % BLOCK_SIZE:
            raise VerificationError(
                f"hash offset {self.hash_offset} is not a multiple of {BLOCK_SIZE} inside the image"
            )
        # The image is the filesystem, then exactly its superblock and tree: a byte after the tree
        # would be written to the slot without the root hash covering it.
        area = hash_area_size(VerityParams(self.data_blocks, b""), superblock=True)
        if self.hash_offset + area != table.size:
            raise VerificationError(
                f"image size {table.size} is not the hash offset {self.hash_offset} plus its "
                f"{area}-byte verity superblock and tree"
            )

    def identity(self) -> str:
        """A digest of every fact: a resume journal written for other facts is not this image's."""
        facts = {
            "compressed_size": self.compressed_size,
            "sha256": self.sha256,
            "frame_size": self.table.frame_size,
            "size": self.table.size,
            "frames": [[f.compressed_size, f.sha256] for f in self.table.frames],
            "root_hash": self.root_hash.hex(),
            "hash_offset": self.hash_offset,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

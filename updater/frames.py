"""The frame format of release images: zstd-compressed as a concatenation of independent frames.

Frame i decompresses to exactly ``frame_size`` bytes (the last one to the remainder), and every
frame header carries its content size. Independent frames are what make a resumed download
possible: a rerun restarts at a frame boundary with an HTTP Range request and a fresh decompressor,
and each frame is checked against its own signed hash, because a hashlib state over the whole file
does not survive a power cut.

This module compresses (for ``updater repo add``), describes the frame table, and checks a frame's
header before a decompressor trusts it (for the slot writer). It does no file or network I/O and
does not decide whether a table is trustworthy (``updater.release`` validates the signed metadata,
the slot writer checks the bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from updater.errors import UsageError, VerificationError
from updater.records import dataclass

if TYPE_CHECKING:
    import zstandard

MiB = 1 << 20
DEFAULT_FRAME_SIZE = 32 * MiB
DEFAULT_LEVEL = 10  # measured on squashfs payloads: most of level 19's size at a tenth of the time
HEADER_MAX = 18  # magic (4), descriptor (1), window (1), dictionary id (<= 4), content size (<= 8)


@dataclass(frozen=True)
class Frame:
    compressed_size: int
    sha256: str  # of the compressed bytes of this frame


@dataclass(frozen=True)
class FrameTable:
    frame_size: int  # uncompressed bytes per frame, all but the last
    size: int  # uncompressed bytes in all
    frames: tuple[Frame, ...]

    @property
    def compressed_size(self) -> int:
        return sum(f.compressed_size for f in self.frames)

    def compressed_offset(self, index: int) -> int:
        """Byte offset of frame ``index`` in the compressed file (``len(frames)``: the end)."""
        return sum(f.compressed_size for f in self.frames[:index])

    def uncompressed_offset(self, index: int) -> int:
        return min(index * self.frame_size, self.size)

    def uncompressed_size(self, index: int) -> int:
        return min(self.frame_size, self.size - index * self.frame_size)

    def problem(self) -> str | None:
        """What makes the table inconsistent with its sizes, or None. The caller picks the error
        class: a bad table is the operator's mistake when publishing, hostile data when fetched."""
        if self.frame_size <= 0 or self.frame_size % MiB:
            return f"frame size {self.frame_size} is not a positive multiple of 1 MiB"
        expected = frame_count(self.size, self.frame_size) if self.size > 0 else 0
        if self.size <= 0 or len(self.frames) != expected:
            return f"{len(self.frames)} frames for {self.size} bytes in frames of {self.frame_size}"
        for index, frame in enumerate(self.frames):
            bound = compressed_bound(self.uncompressed_size(index))
            if not 0 < frame.compressed_size <= bound:
                return (
                    f"frame {index} has {frame.compressed_size} compressed bytes, "
                    f"outside 1..{bound} for {self.uncompressed_size(index)} bytes of content"
                )
        return None

    def check(self) -> None:
        """Raise UsageError unless the table is consistent with its sizes."""
        problem = self.problem()
        if problem:
            raise UsageError(problem)


def frame_count(size: int, frame_size: int) -> int:
    return -(-size // frame_size)


def compressed_bound(size: int) -> int:
    """The largest zstd frame that ``size`` bytes of content can take: zstd's own
    ``ZSTD_COMPRESSBOUND`` (incompressible data is stored in raw blocks, each with a 3-byte
    header) plus room for the frame header and checksum. A signed frame table claiming more is
    not something ``compress_frames`` made."""
    small = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + small + 32


def compress_frames(
    chunks: Iterable[bytes], frame_size: int = DEFAULT_FRAME_SIZE, level: int = DEFAULT_LEVEL
) -> Iterator[tuple[bytes, int]]:
    """Compress the concatenation of ``chunks`` into independent frames of ``frame_size``
    uncompressed bytes; yields (compressed frame, uncompressed length) pairs in order."""
    import zstandard  # only publishing and the writer need it

    if frame_size <= 0 or frame_size % MiB:
        raise UsageError(f"frame size {frame_size} is not a positive multiple of 1 MiB")
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True, threads=-1)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= frame_size:
            data = bytes(pending[:frame_size])
            del pending[:frame_size]
            yield compressor.compress(data), len(data)
    if pending:
        yield compressor.compress(bytes(pending)), len(pending)


class TableBuilder:
    """Collects the frame table while frames go somewhere else (a file, a stream); publishing
    passes a whole image through without holding more than one frame."""

    def __init__(self, frame_size: int) -> None:
        self.frame_size = frame_size
        self.size = 0
        self.frames: list[Frame] = []

    def add(self, data: bytes, length: int) -> bytes:
        """Record one frame (compressed bytes, uncompressed length); returns ``data``."""
        self.frames.append(Frame(len(data), hashlib.sha256(data).hexdigest()))
        self.size += length
        return data

    def table(self) -> FrameTable:
        result = FrameTable(self.frame_size, self.size, tuple(self.frames))
        result.check()
        return result


def table_of(frames: Iterable[tuple[bytes, int]], frame_size: int) -> tuple[FrameTable, bytes]:
    """The frame table and the compressed bytes of a sequence from ``compress_frames`` (for
    small images and tests)."""
    builder = TableBuilder(frame_size)
    out = b"".join(builder.add(data, length) for data, length in frames)
    return builder.table(), out


def window_limit(frame_size: int) -> int:
    """The largest decoder window a frame of ``frame_size`` bytes can need: zstd sizes a
    single-segment frame's window to its content size, and the limit the decoder takes is a
    power of two (it becomes a window log)."""
    return 1 << max(frame_size - 1, 1).bit_length()


def decompressor(frame_size: int) -> zstandard.ZstdDecompressor:
    """A decoder whose memory is bounded by the frame size, whatever a frame header asks for."""
    import zstandard

    return zstandard.ZstdDecompressor(max_window_size=window_limit(frame_size))


def check_header(head: bytes, index: int, expected_size: int, frame_size: int) -> None:
    """Raise VerificationError unless ``head`` (the first ``HEADER_MAX`` bytes of frame ``index``,
    or all of it when shorter) opens a zstd frame that declares exactly ``expected_size`` bytes of
    content and a window of at most ``window_limit(frame_size)``."""
    import zstandard

    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as exc:
        raise VerificationError(f"frame {index} has no valid zstd frame header: {exc}") from None
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise VerificationError(f"frame {index} does not declare its content size")
    if params.content_size != expected_size:
        raise VerificationError(
            f"frame {index} declares {params.content_size} bytes, the table {expected_size}"
        )
    if params.window_size > window_limit(frame_size):
        raise VerificationError(
            f"frame {index} asks for a {params.window_size}-byte window, more than its frame size"
        )

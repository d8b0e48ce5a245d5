"""The release image frame format: independent zstd frames of a fixed uncompressed size."""

from __future__ import annotations

import hashlib
import os

import pytest
import zstandard

from updater import frames
from updater.errors import UsageError

MiB = 1 << 20


@pytest.mark.parametrize("size", [1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345])
def test_frames_split_at_frame_size_and_decompress_independently(size: int) -> None:
    data = (os.urandom(4096) + bytes(4096)) * (size // 8192) + os.urandom(size % 8192)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    table, compressed = frames.table_of(frames.compress_frames(chunks, MiB), MiB)
    assert table.size == size and len(table.frames) == -(-size // MiB)
    assert table.compressed_size == len(compressed)
    # each frame on its own: content size in its header, its own hash, exactly its slice
    for i, frame in enumerate(table.frames):
        start = table.compressed_offset(i)
        raw = compressed[start : start + frame.compressed_size]
        assert hashlib.sha256(raw).hexdigest() == frame.sha256
        assert zstandard.frame_content_size(raw) == table.uncompressed_size(i)
        plain = zstandard.ZstdDecompressor().decompress(raw)
        assert (
            plain == data[table.uncompressed_offset(i) : table.uncompressed_offset(i) + len(plain)]
        )
    assert table.compressed_offset(len(table.frames)) == len(compressed)


@pytest.mark.parametrize("frame_size", [0, -MiB, MiB + 1, 4096])
def test_frame_size_must_be_whole_mib(frame_size: int) -> None:
    with pytest.raises(UsageError, match="multiple of 1 MiB"):
        list(frames.compress_frames([b"x"], frame_size))
    with pytest.raises(UsageError, match="multiple of 1 MiB"):
        frames.FrameTable(frame_size, 1, (frames.Frame(1, "0" * 64),)).check()


def test_table_check_counts_frames() -> None:
    one = frames.Frame(10, "0" * 64)
    frames.FrameTable(MiB, MiB + 1, (one, one)).check()
    for size, count in ((MiB + 1, 1), (MiB, 2), (0, 0)):
        with pytest.raises(UsageError, match="frames for"):
            frames.FrameTable(MiB, size, (one,) * count).check()

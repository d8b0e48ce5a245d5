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


def zstd_compressbound(size: int) -> int:
    """ZSTD_COMPRESSBOUND from zstd.h, written out from the header, not from the module."""
    return size + (size >> 8) + (((128 << 10) - size) >> 11 if size < (128 << 10) else 0)


@pytest.mark.parametrize(
    "size",
    [0, 1, 2047, 2048, 128 * 1024 - 1, 128 * 1024, 128 * 1024 + 1, 200 * 1024, MiB, 32 * MiB],
)
def test_compressed_bound_is_zstds_plus_header_room(size: int) -> None:
    assert frames.compressed_bound(size) == zstd_compressbound(size) + 32


@pytest.mark.parametrize("size", [1, 4096, 128 * 1024 + 1, MiB])
@pytest.mark.parametrize("level", [1, 10, 19])
def test_real_zstd_frames_of_random_data_fit_the_bound(size: int, level: int) -> None:
    """The worst case (incompressible data) as zstd itself writes it, with the content size
    and a checksum in the header."""
    data = os.urandom(size)
    frame = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    assert len(frame) <= frames.compressed_bound(size)


def test_table_problem_names_the_frame_and_its_limits() -> None:
    sha = "0" * 64
    bound = frames.compressed_bound(MiB)
    last_bound = frames.compressed_bound(5)
    ok = frames.FrameTable(MiB, MiB + 5, (frames.Frame(bound, sha), frames.Frame(last_bound, sha)))
    assert ok.problem() is None
    cases = {
        (bound + 1, 1): f"frame 0 has {bound + 1} compressed bytes, outside 1..{bound} for "
        f"{MiB} bytes of content",
        (0, 1): f"frame 0 has 0 compressed bytes, outside 1..{bound} for {MiB} bytes of content",
        (1, last_bound + 1): f"frame 1 has {last_bound + 1} compressed bytes, outside "
        f"1..{last_bound} for 5 bytes of content",
    }
    for (first, second), message in cases.items():
        pair = (frames.Frame(first, sha), frames.Frame(second, sha))
        table = frames.FrameTable(MiB, MiB + 5, pair)
        assert table.problem() == message
        with pytest.raises(UsageError, match=f"^{message}$"):
            table.check()
    assert frames.FrameTable(MiB, 1, ()).problem() == f"0 frames for 1 bytes in frames of {MiB}"
    assert frames.FrameTable(MiB, -1, ()).problem() == f"0 frames for -1 bytes in frames of {MiB}"
    no_size = frames.FrameTable(0, 1, ()).problem()
    assert no_size == "frame size 0 is not a positive multiple of 1 MiB"


def test_table_offsets_and_sizes() -> None:
    sha = "0" * 64
    table = frames.FrameTable(MiB, 2 * MiB + 7, tuple(frames.Frame(n, sha) for n in (10, 20, 5)))
    assert [table.uncompressed_offset(i) for i in range(4)] == [0, MiB, 2 * MiB, 2 * MiB + 7]
    assert [table.uncompressed_size(i) for i in range(3)] == [MiB, MiB, 7]
    assert [table.compressed_offset(i) for i in range(4)] == [0, 10, 30, 35]
    assert table.compressed_size == 35
    assert frames.frame_count(2 * MiB + 7, MiB) == 3 and frames.frame_count(2 * MiB, MiB) == 2


def test_table_builder_records_each_frame() -> None:
    builder = frames.TableBuilder(MiB)
    assert builder.add(b"abc", MiB) == b"abc"
    builder.add(b"de", 3)
    table = builder.table()
    assert table == frames.FrameTable(
        MiB,
        MiB + 3,
        (
            frames.Frame(3, hashlib.sha256(b"abc").hexdigest()),
            frames.Frame(2, hashlib.sha256(b"de").hexdigest()),
        ),
    )
    with pytest.raises(UsageError, match="frames for"):
        frames.TableBuilder(MiB).table()


def test_compress_frames_keeps_chunks_across_frame_boundaries() -> None:
    data = os.urandom(MiB) + b"tail"
    out = list(frames.compress_frames([data[:10], data[10 : MiB + 2], data[MiB + 2 :]], MiB))
    assert [length for _, length in out] == [MiB, 4]
    d = zstandard.ZstdDecompressor()
    assert b"".join(d.decompress(f) for f, _ in out) == data
    assert list(frames.compress_frames([], MiB)) == []


def test_compress_frames_uses_the_level_asked_for() -> None:
    """Text compresses better at zstd's level 19 than at level 1 (zstd's levels, not ours), and
    each frame's header carries its content size (RFC 8878 Frame_Content_Size)."""
    text = b"".join(b"line %d of a log that repeats itself with small changes\n" % (i % 977)
                    for i in range(40000))  # fmt: skip
    fast = list(frames.compress_frames([text], MiB, level=1))
    small = list(frames.compress_frames([text], MiB, level=19))
    assert sum(len(f) for f, _ in small) < sum(len(f) for f, _ in fast)
    for frame, length in small:
        assert zstandard.get_frame_parameters(frame).content_size == length

"""Bounds on the signed facts of an image, and the frame header checks of the release format.

Expected values come from the release format (a table adds up to the TUF length, one frame per
frame size, the image ends with its verity superblock and tree) and from RFC 8878 for the zstd
frame header, built here byte by byte.
"""

from __future__ import annotations

import os
import struct

import pytest
import zstandard

from tests.unit.slotimages import MiB, make_image
from updater import frames, records
from updater.errors import VerificationError
from updater.frames import Frame, FrameTable
from updater.slotwrite.facts import ImageFacts, compress_bound

GOOD = make_image(data_blocks=300).facts  # 1.2 MiB of data and 16 KiB of hash area: 2 frames


def facts(**changes: object) -> ImageFacts:
    return records.replace(GOOD, **changes)


def table(**changes: object) -> FrameTable:
    return records.replace(GOOD.table, **changes)


def test_good_facts_pass_and_identity_covers_every_field() -> None:
    GOOD.check()
    variants = [
        facts(sha256="1" * 64),
        facts(compressed_size=GOOD.compressed_size + 1),
        facts(root_hash=bytes(32)),
        facts(hash_offset=GOOD.hash_offset - 4096),
        facts(table=table(frame_size=2 * MiB)),
        facts(table=table(size=GOOD.size + 4096)),
        facts(table=table(frames=(GOOD.table.frames[0], Frame(1, "2" * 64)))),
    ]
    identities = {GOOD.identity(), *(v.identity() for v in variants)}
    assert len(identities) == len(variants) + 1
    assert GOOD.identity() == records.replace(GOOD).identity()


FIRST, LAST = GOOD.table.frames


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (facts(sha256="A" * 64), "image sha256 is not"),
        (facts(sha256="a" * 63), "image sha256 is not"),
        (facts(root_hash=bytes(31)), "root hash is 31 bytes"),
        (facts(table=table(frame_size=MiB + 4096)), "not a multiple of 1 MiB"),
        (facts(table=table(frame_size=512 * MiB)), "up to"),
        (facts(table=table(frame_size=0)), "not a multiple of 1 MiB"),
        (facts(table=table(size=GOOD.size + 1)), "is not a multiple of 4096"),
        (facts(table=table(frames=(FIRST,))), "1 frames cannot hold"),
        (facts(table=table(frames=(FIRST, LAST, LAST))), "3 frames cannot hold"),
        (facts(table=table(frames=(FIRST, Frame(0, LAST.sha256)))), "frame 1 is 0 bytes"),
        (
            facts(table=table(frames=(Frame(2 * MiB, FIRST.sha256), LAST))),
            "frame 0 is 2097152 bytes compressed, impossible for 1048576",
        ),
        (facts(table=table(frames=(FIRST, Frame(LAST.compressed_size, "x")))), "frame 1 sha256"),
        (facts(compressed_size=GOOD.compressed_size - 1), "frames add up to"),
        (facts(hash_offset=GOOD.hash_offset + 1), "hash offset"),
        (facts(hash_offset=0), "hash offset"),
        (facts(hash_offset=GOOD.size), "hash offset"),
        (facts(hash_offset=GOOD.hash_offset - 4096), "not the hash offset .* plus its"),
    ],
)
def test_bad_facts_are_refused(bad: ImageFacts, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        bad.check()


@pytest.mark.parametrize("size", [0, 1, 1000, 128 << 10, (128 << 10) + 1, MiB])
@pytest.mark.parametrize("level", [1, 19])
def test_compress_bound_holds_for_incompressible_data(size: int, level: int) -> None:
    data = os.urandom(size)
    compressed = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    assert len(compressed) <= compress_bound(size)


def rfc8878_header(window_log: int, content_size: int) -> bytes:
    """Magic, a descriptor with a 2-byte content size field and no single segment, a window
    descriptor (exponent = window log - 10, mantissa 0), the size minus 256 (RFC 8878 3.1.1.1)."""
    descriptor = 0b01 << 6
    window = (window_log - 10) << 3
    return struct.pack("<IBBH", 0xFD2FB528, descriptor, window, content_size - 256)


def test_frame_header_checks() -> None:
    data = os.urandom(5000)
    (frame, size), *_ = frames.compress_frames([data], MiB)
    frames.check_header(frame[: frames.HEADER_MAX], 3, 5000, MiB)
    with pytest.raises(VerificationError, match="frame 3 declares 5000 bytes, the table 4999"):
        frames.check_header(frame[: frames.HEADER_MAX], 3, 4999, MiB)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    stream = unsized.compress(data) + unsized.flush()
    with pytest.raises(VerificationError, match="does not declare its content size"):
        frames.check_header(stream[: frames.HEADER_MAX], 0, 5000, MiB)
    with pytest.raises(VerificationError, match="no valid zstd frame header"):
        frames.check_header(b"PK\x03\x04" + bytes(14), 0, 5000, MiB)
    huge_window = rfc8878_header(window_log=27, content_size=1000)
    frames.check_header(huge_window, 0, 1000, 128 * MiB)
    with pytest.raises(VerificationError, match="asks for a 134217728-byte window"):
        frames.check_header(huge_window, 0, 1000, 32 * MiB)


@pytest.mark.parametrize(
    ("frame_size", "limit"), [(MiB, MiB), (32 * MiB, 32 * MiB), (33 * MiB, 64 * MiB)]
)
def test_window_limit_is_the_next_power_of_two(frame_size: int, limit: int) -> None:
    assert frames.window_limit(frame_size) == limit


def test_decompressor_refuses_a_window_beyond_the_frame_size() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=24, write_content_size=False
    )
    compressor = zstandard.ZstdCompressor(compression_params=params)
    stream = compressor.compressobj()
    data = stream.compress(os.urandom(100)) + stream.flush()
    assert zstandard.get_frame_parameters(data).window_size == 16 * MiB
    frames.decompressor(16 * MiB).decompressobj().decompress(data)
    with pytest.raises(zstandard.ZstdError):
        frames.decompressor(8 * MiB).decompressobj().decompress(data)

"""The slot writer end to end on image files: the image lands, and every bad input is refused
with one error, the slot left unactivatable (the journal does not claim a bad frame).

Expected bytes are the image itself (built in ``slotimages`` from hashlib and the verity module,
not by the writer); expected errors are the causes listed in the release format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.slotimages import (
    EndlessSource,
    MemorySource,
    MiB,
    ReleaseImage,
    UnopenedSource,
    make_image,
)
from updater.errors import DeviceError, SlotError, TransportError, VerificationError
from updater.frames import Frame, FrameTable
from updater.slotwrite import (
    FileSource,
    ImageFacts,
    Phase,
    Region,
    WriteResult,
    readback,
    write_image,
)
from updater.slotwrite import journal as journal_file
from updater.slotwrite.source import ByteSource
from updater.verity import BLOCK_SIZE, Superblock, VerityParams

SLOT_SIZE = 6 * MiB


@pytest.fixture(scope="module")
def image() -> ReleaseImage:
    return make_image()


@pytest.fixture
def slot(fast_tmp: Path) -> Path:
    path = fast_tmp / "slot.img"
    path.write_bytes(b"\xa5" * SLOT_SIZE)  # old contents, not zeros: nothing may pass by luck
    return path


def write(
    source: ByteSource,
    image: ReleaseImage | ImageFacts,
    slot: Path,
    fast_tmp: Path,
    **kwargs: object,
) -> WriteResult:
    facts = image.facts if isinstance(image, ReleaseImage) else image
    kwargs.setdefault("booted", None)
    kwargs.setdefault("workers", 1)
    return write_image(
        source,
        facts,
        Region(str(slot)),
        state_dir=str(fast_tmp / "state"),
        **kwargs,  # type: ignore[arg-type]
    )


def frames_done(fast_tmp: Path) -> int | None:
    found = journal_file.load(str(fast_tmp / "state"))
    return None if found is None else found.frames_done


def test_image_lands_in_the_slot_and_is_verified(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    events: list[tuple[Phase, int, int]] = []
    result = write(
        MemorySource(image.compressed), image, slot, fast_tmp,
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    content = slot.read_bytes()
    assert content[: len(image.raw)] == image.raw
    assert content[len(image.raw) :] == b"\xa5" * (SLOT_SIZE - len(image.raw))
    assert result.first_frame == 0 and result.frames == 5
    assert result.bytes_written == len(image.raw) and result.whole_file_checked
    assert frames_done(fast_tmp) == 5
    writes = [done for phase, done, total in events if phase is Phase.WRITE]
    checks = [done for phase, done, total in events if phase is Phase.VERIFY]
    assert writes == sorted(writes) and writes[-1] == len(image.raw)
    assert checks == sorted(checks) and checks[-1] == image.facts.hash_offset
    assert events.index((Phase.VERIFY, checks[0], image.facts.hash_offset)) > len(writes) - 1


def test_file_source_and_read_back_threads(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    compressed = fast_tmp / "usr.img.zst"
    compressed.write_bytes(image.compressed)
    result = write(
        FileSource(str(compressed), chunk_size=100_000), image, slot, fast_tmp, workers=2
    )
    assert slot.read_bytes()[: len(image.raw)] == image.raw and result.whole_file_checked


def test_partition_range_of_a_disk_image(image: ReleaseImage, fast_tmp: Path) -> None:
    disk = fast_tmp / "disk.img"
    disk.write_bytes(b"\x11" * MiB + b"\x22" * SLOT_SIZE + b"\x33" * MiB)
    slot = Region(str(disk), offset=MiB, size=SLOT_SIZE, label="usr-b")
    booted = Region(str(disk), offset=0, size=MiB)
    write_image(
        MemorySource(image.compressed), image.facts, slot, booted=booted,
        state_dir=str(fast_tmp / "state"), workers=1,
    )  # fmt: skip
    content = disk.read_bytes()
    assert content[:MiB] == b"\x11" * MiB
    assert content[MiB : MiB + len(image.raw)] == image.raw
    assert content[MiB + len(image.raw) :] == b"\x22" * (SLOT_SIZE - len(image.raw)) + b"\x33" * MiB


def test_rerun_after_success_only_reads_back(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    write(MemorySource(image.compressed), image, slot, fast_tmp)
    again = write(UnopenedSource(), image, slot, fast_tmp)
    assert again.first_frame == 5 and again.bytes_written == 0 and not again.whole_file_checked


# -- refused before anything is written ------------------------------------------------------


def assert_untouched(slot: Path, fast_tmp: Path) -> None:
    assert slot.read_bytes() == b"\xa5" * SLOT_SIZE
    assert frames_done(fast_tmp) is None


def test_image_larger_than_the_slot(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    small = Region(str(slot), size=len(image.raw) - BLOCK_SIZE)
    with pytest.raises(DeviceError, match="holds only"):
        write_image(
            UnopenedSource(), image.facts, small, booted=None, state_dir=str(fast_tmp / "state")
        )
    assert_untouched(slot, fast_tmp)


@pytest.mark.parametrize(
    ("offset", "size", "refused"),
    [(0, SLOT_SIZE, True), (SLOT_SIZE - 1, 1, True), (SLOT_SIZE, MiB, False)],
)
def test_booted_slot_is_never_the_destination(
    image: ReleaseImage, fast_tmp: Path, offset: int, size: int, refused: bool
) -> None:
    disk = fast_tmp / "disk.img"
    disk.write_bytes(b"\xa5" * (SLOT_SIZE + MiB))
    alias = fast_tmp / "alias.img"
    alias.symlink_to(disk)  # another name for the same file changes nothing
    booted = Region(str(alias), offset=offset, size=size)
    source: ByteSource = UnopenedSource() if refused else MemorySource(image.compressed)
    slot = Region(str(disk), size=SLOT_SIZE)
    if not refused:
        write_image(source, image.facts, slot, booted=booted, state_dir=str(fast_tmp / "s"))
        return
    with pytest.raises(SlotError, match="overlaps the booted slot"):
        write_image(source, image.facts, slot, booted=booted, state_dir=str(fast_tmp / "s"))
    assert disk.read_bytes() == b"\xa5" * (SLOT_SIZE + MiB)
    assert not (fast_tmp / "s").exists()


def table_with(image: ReleaseImage, frames: tuple[Frame, ...]) -> FrameTable:
    table = image.facts.table
    return FrameTable(table.frame_size, table.size, frames)


def test_frame_table_that_does_not_add_up(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    first, *rest = image.facts.table.frames
    longer = (Frame(first.compressed_size + 1, first.sha256), *rest)
    bad = image.with_facts(table=table_with(image, longer))
    with pytest.raises(VerificationError, match="frames add up to .* signed length"):
        write(UnopenedSource(), bad, slot, fast_tmp)
    assert_untouched(slot, fast_tmp)


def test_frame_count_that_does_not_fit_the_size(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    fewer = image.facts.table.frames[:-1]
    bad = image.with_facts(
        table=table_with(image, fewer),
        compressed_size=sum(f.compressed_size for f in fewer),
    )
    with pytest.raises(VerificationError, match="4 frames cannot hold"):
        write(UnopenedSource(), bad, slot, fast_tmp)
    assert_untouched(slot, fast_tmp)


# -- found while streaming ---------------------------------------------------------------------


def test_target_longer_than_signed(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    source = MemorySource(image.compressed + b"\0" * 10)
    with pytest.raises(VerificationError, match="longer than its signed"):
        write(source, image, slot, fast_tmp)
    assert frames_done(fast_tmp) == 4  # the last frame is never completed
    assert source.closed == 1


def test_endless_source_is_cut_at_the_signed_length(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    source = EndlessSource(image.compressed)
    with pytest.raises(VerificationError, match="longer than its signed"):
        write(source, image, slot, fast_tmp)
    assert source.extra_chunks == 1


def test_truncated_target(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    source = MemorySource(image.compressed[:-1])
    with pytest.raises(VerificationError, match=f"ends after {len(image.compressed) - 1} of"):
        write(source, image, slot, fast_tmp)
    assert frames_done(fast_tmp) == 4


@pytest.mark.parametrize("frame", [0, 2, 4])
def test_flipped_byte_is_caught_at_its_frame(
    image: ReleaseImage, slot: Path, fast_tmp: Path, frame: int
) -> None:
    data = bytearray(image.compressed)
    data[image.frame_start(frame) + 100] ^= 0x01
    with pytest.raises(VerificationError, match=f"frame {frame} of the image does not match"):
        write(MemorySource(bytes(data)), image, slot, fast_tmp)
    assert frames_done(fast_tmp) == frame  # every frame before it is durable, none after


def test_frame_table_hash_of_another_frame(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    frames = list(image.facts.table.frames)
    frames[1], frames[2] = Frame(frames[1].compressed_size, frames[2].sha256), frames[2]
    bad = image.with_facts(table=table_with(image, tuple(frames)))
    with pytest.raises(VerificationError, match="frame 1 of the image does not match"):
        write(MemorySource(image.compressed), bad, slot, fast_tmp)


def test_whole_file_hash_mismatch_forgets_the_journal(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    bad = image.with_facts(sha256="0" * 64)
    with pytest.raises(VerificationError, match="image's sha256 is"):
        write(MemorySource(image.compressed), bad, slot, fast_tmp)
    assert frames_done(fast_tmp) is None  # a resumed run could not check it again


def test_transport_error_then_resume(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    cut = image.frame_start(3) + 1000
    failing = MemorySource(image.compressed, fail_at=cut)
    with pytest.raises(TransportError, match="connection reset"):
        write(failing, image, slot, fast_tmp)
    assert frames_done(fast_tmp) == 3 and failing.closed == 1
    source = MemorySource(image.compressed)
    result = write(source, image, slot, fast_tmp)
    assert source.opened == [image.frame_start(3)]
    assert result.first_frame == 3 and not result.whole_file_checked
    assert result.bytes_written == len(image.raw) - image.data_end(3)
    assert slot.read_bytes()[: len(image.raw)] == image.raw


def test_source_that_fails_to_open(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    with pytest.raises(DeviceError, match="cannot open"):
        write(FileSource(str(fast_tmp / "missing.zst")), image, slot, fast_tmp)
    assert frames_done(fast_tmp) == 0


def test_write_error_is_a_device_error(
    image: ReleaseImage, slot: Path, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    calls = []

    def full(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DeviceError, match=f"{slot} at byte {2 * MiB}: No space left"):
        write(MemorySource(image.compressed), image, slot, fast_tmp)
    assert frames_done(fast_tmp) == 2


# -- found at read-back ------------------------------------------------------------------------


def test_slot_changed_between_write_and_read_back(
    image: ReleaseImage, slot: Path, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verify = readback.verify
    block = 777

    def corrupt_first(*args: object, **kwargs: object) -> None:
        with slot.open("r+b") as f:
            f.seek(block * BLOCK_SIZE + 5)
            f.write(b"X")
        verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(readback, "verify", corrupt_first)
    with pytest.raises(VerificationError, match=f"read back: data block {block} does not match"):
        write(MemorySource(image.compressed), image, slot, fast_tmp)
    assert frames_done(fast_tmp) is None  # the next run starts over


@pytest.mark.parametrize(
    ("lie", "message"),
    [
        (VerityParams(1100, b"another salt"), "verity root hash mismatch"),
        (
            VerityParams(1099, b"release salt"),
            "counts 1099 data blocks, the signed hash offset 1100",
        ),
    ],
)
def test_lying_superblock_is_found_at_read_back(
    slot: Path, fast_tmp: Path, lie: VerityParams, message: str
) -> None:
    import uuid

    image = make_image(superblock=Superblock(lie, uuid.UUID(int=1).bytes))
    with pytest.raises(VerificationError, match=message):
        write(MemorySource(image.compressed), image, slot, fast_tmp)
    assert frames_done(fast_tmp) is None


def test_signed_root_hash_of_another_image(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    other = make_image(seed=2).facts.root_hash
    with pytest.raises(VerificationError, match=f"signed root hash is {other.hex()}"):
        write(MemorySource(image.compressed), image.with_facts(root_hash=other), slot, fast_tmp)


def test_unaligned_range_falls_back_to_buffered_io(image: ReleaseImage, tmp_path: Path) -> None:
    # Not on tmpfs: a disk filesystem takes O_DIRECT, and refuses it for this offset (EINVAL).
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\x77" * (SLOT_SIZE + 100))
    slot = Region(str(disk), offset=100, size=SLOT_SIZE)
    result = write_image(
        MemorySource(image.compressed), image.facts, slot, booted=None,
        state_dir=str(tmp_path / "state"), workers=2,
    )  # fmt: skip
    assert not result.direct_io
    content = disk.read_bytes()
    assert content[:100] == b"\x77" * 100 and content[100 : 100 + len(image.raw)] == image.raw


def test_booted_slot_is_never_opened(
    image: ReleaseImage, slot: Path, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted = fast_tmp / "booted.img"
    booted.write_bytes(b"\x42" * SLOT_SIZE)
    opened: list[str] = []
    real_open = os.open

    def recording(path: str, *args: object, **kwargs: object) -> int:
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording)
    write_image(
        MemorySource(image.compressed), image.facts, Region(str(slot)),
        booted=Region(str(booted)), state_dir=str(fast_tmp / "state"), workers=2,
    )  # fmt: skip
    assert str(slot) in opened and str(booted) not in opened


class RefillingSource:
    """Yields one bytearray, refilled with the next chunk each time (a buffer-reusing reader)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, start: int) -> Iterator[bytes]:
        buffer = bytearray(64 << 10)
        for offset in range(start, len(self.data), len(buffer)):
            chunk = self.data[offset : offset + len(buffer)]
            buffer[: len(chunk)] = chunk
            yield buffer[: len(chunk)] if len(chunk) < len(buffer) else buffer  # type: ignore[misc]


def test_source_that_reuses_its_buffer(image: ReleaseImage, slot: Path, fast_tmp: Path) -> None:
    write(RefillingSource(image.compressed), image, slot, fast_tmp)
    assert slot.read_bytes()[: len(image.raw)] == image.raw


def test_slot_swapped_after_its_check_is_not_written(
    image: ReleaseImage, slot: Path, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from updater.slotwrite import region, writer

    other = fast_tmp / "other.img"
    other.write_bytes(b"\x42" * SLOT_SIZE)
    real = region.resolve

    def resolve_then_swap(region: Region) -> object:
        target = real(region)
        if region.path == str(slot):
            other.replace(slot)  # the checked name now points at another file
        return target

    monkeypatch.setattr(writer, "resolve", resolve_then_swap)
    with pytest.raises(DeviceError, match="changed after it was checked"):
        write(MemorySource(image.compressed), image, slot, fast_tmp)
    assert slot.read_bytes() == b"\x42" * SLOT_SIZE


def test_second_writer_on_the_same_state_is_refused(
    image: ReleaseImage, slot: Path, fast_tmp: Path
) -> None:
    import fcntl

    (fast_tmp / "state").mkdir()
    with open(fast_tmp / "state" / journal_file.LOCKNAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DeviceError, match="another slot write holds"):
            write(UnopenedSource(), image, slot, fast_tmp)
    assert_untouched(slot, fast_tmp)

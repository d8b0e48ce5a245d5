"""Resuming the slot writer after a kill or a power cut, at every point where one can land.

A kill is a BaseException raised from inside the writer at the chosen point (the process dies
there); a power cut additionally loses whatever was not durable, which is simulated by
scribbling over every byte of the slot after the last frame the journal counts, and by a torn
temporary journal file. The rerun must then leave exactly the image on the slot, starting at the
frame the journal promised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.slotimages import MemorySource, MiB, ReleaseImage, make_image
from updater.errors import TransportError, VerificationError
from updater.slotwrite import Region, WriteResult, write_image
from updater.slotwrite import journal as journal_file
from updater.slotwrite.blockio import SlotIO

FRAMES = 5


class PowerCut(BaseException):
    """Not an Exception: nothing in the writer may catch it and carry on."""


@pytest.fixture(scope="module")
def image() -> ReleaseImage:
    image = make_image()
    assert len(image.facts.table.frames) == FRAMES
    return image


def run(image: ReleaseImage, fast_tmp: Path, source: MemorySource | None = None) -> WriteResult:
    return write_image(
        source or MemorySource(image.compressed), image.facts, Region(str(fast_tmp / "slot")),
        booted=None, state_dir=str(fast_tmp / "state"), workers=1,
    )  # fmt: skip


def durable_frames(fast_tmp: Path) -> int:
    found = journal_file.load(str(fast_tmp / "state"))
    assert found is not None
    return found.frames_done


def power_cut(image: ReleaseImage, fast_tmp: Path) -> int:
    """Lose everything that was not durable; return the frames the journal still counts."""
    done = durable_frames(fast_tmp)
    slot = fast_tmp / "slot"
    with slot.open("r+b") as f:
        f.seek(image.data_end(done))
        f.write(os.urandom(slot.stat().st_size - image.data_end(done)))
    (fast_tmp / "state" / f"{journal_file.FILENAME}.tmp").write_bytes(b'{"format": 1, "ima')
    return done


def kill_after(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, calls: int) -> None:
    """Let ``owner.name`` run ``calls`` times, then die right after the last of them."""
    real: Callable[..., Any] = getattr(owner, name)
    count = 0

    def dying(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        result = real(*args, **kwargs)
        count += 1
        if count == calls:
            raise PowerCut(f"after {name} #{calls}")
        return result

    monkeypatch.setattr(owner, name, dying)


@pytest.fixture
def slot(fast_tmp: Path) -> Path:
    path = fast_tmp / "slot"
    path.write_bytes(b"\xa5" * 6 * MiB)
    return path


def resume_and_check(image: ReleaseImage, fast_tmp: Path, expected_first: int) -> None:
    source = MemorySource(image.compressed)
    result = run(image, fast_tmp, source)
    assert result.first_frame == expected_first
    assert result.whole_file_checked == (expected_first == 0)
    if expected_first < FRAMES:
        assert source.opened == [image.frame_start(expected_first)]
    assert (fast_tmp / "slot").read_bytes()[: len(image.raw)] == image.raw
    assert durable_frames(fast_tmp) == FRAMES


# Each point is reached once per frame, and dying right after its k-th passage leaves k - 1
# frames recorded: write #k put frame k-1 on the slot but did not sync it; sync #k made it
# durable but the journal does not say so yet; journal save #1 is the empty journal written
# before the first byte, save #k records frame k-2 (and #6 the last frame, before the read-back).
# The decoder's 4 MiB buffers never span a frame, so one write per 1 MiB frame.
KILL_POINTS = [
    *((SlotIO, "write", k) for k in range(1, FRAMES + 1)),
    *((SlotIO, "sync", k) for k in range(1, FRAMES + 1)),
    *((journal_file, "save", k) for k in range(1, FRAMES + 2)),
]


@pytest.mark.parametrize(("owner", "name", "calls"), KILL_POINTS)
def test_killed_at_every_point_then_resumed(
    image: ReleaseImage,
    fast_tmp: Path,
    slot: Path,
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    calls: int,
) -> None:
    with monkeypatch.context() as patch:
        kill_after(patch, owner, name, calls)
        with pytest.raises(PowerCut):
            run(image, fast_tmp)
    assert power_cut(image, fast_tmp) == calls - 1
    resume_and_check(image, fast_tmp, calls - 1)


def test_killed_inside_the_journal_rename(
    image: ReleaseImage, fast_tmp: Path, slot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    count = 0

    def torn(src: str, dst: str) -> None:
        nonlocal count
        count += 1
        if count == 3:  # the new journal was written to its temporary name, not renamed
            raise PowerCut
        real(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", torn)
        with pytest.raises(PowerCut):
            run(image, fast_tmp)
    assert power_cut(image, fast_tmp) == 1
    resume_and_check(image, fast_tmp, 1)


@pytest.mark.parametrize(
    "damage",
    [b"", b'{"format": 1, "image": "', b"\xff\xfe", b'{"format": 2}', b"[]",
     b'{"format": 1, "image": "x", "destination": {}, "frames": 5, "frames_done": 6}',
     b'{"format": 1, "image": "x", "destination": {}, "frames": true, "frames_done": 0}',
     b" " * (journal_file.MAX_SIZE + 1)],
)  # fmt: skip
def test_torn_or_foreign_journal_starts_over(
    image: ReleaseImage, fast_tmp: Path, slot: Path, damage: bytes
) -> None:
    (fast_tmp / "state").mkdir()
    (fast_tmp / "state" / journal_file.FILENAME).write_bytes(damage)
    result = run(image, fast_tmp)
    assert result.first_frame == 0 and result.journal_note is not None
    assert slot.read_bytes()[: len(image.raw)] == image.raw


def test_journal_of_another_image_or_slot_starts_over(
    image: ReleaseImage, fast_tmp: Path, slot: Path
) -> None:
    with pytest.raises(TransportError):
        run(image, fast_tmp, MemorySource(image.compressed, fail_at=image.frame_start(3)))
    other = make_image(seed=7)
    result = run(other, fast_tmp)
    assert (result.first_frame, result.journal_note) == (
        0,
        "the journal is for another image or slot",
    )
    moved = fast_tmp / "slot"
    moved.rename(fast_tmp / "old")
    moved.write_bytes(b"\0" * 6 * MiB)  # the same path, another file
    assert run(other, fast_tmp).first_frame == 0
    assert moved.read_bytes()[: len(other.raw)] == other.raw


def test_journal_that_promises_too_much_is_caught_and_forgotten(
    image: ReleaseImage, fast_tmp: Path, slot: Path
) -> None:
    run(image, fast_tmp)
    journal_path = fast_tmp / "state" / journal_file.FILENAME
    state = json.loads(journal_path.read_text())
    slot.write_bytes(b"\xa5" * 6 * MiB)  # same file, its contents gone behind the journal's back
    with pytest.raises(VerificationError, match="read back"):
        run(image, fast_tmp)
    assert not journal_path.exists()
    assert run(image, fast_tmp).first_frame == 0 and state["frames_done"] == FRAMES

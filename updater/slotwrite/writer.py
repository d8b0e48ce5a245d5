"""Write a signed USR image into a slot in one verified, resumable pass.

``write_image`` does, in this order, and nothing else:

1. bound the signed facts (``ImageFacts.check``): a table that does not add up is refused before
   a byte is fetched;
2. resolve the destination and the booted slot, and refuse a destination that overlaps the booted
   slot, is held by device-mapper, or is smaller than the image, before anything is opened for
   writing (the booted slot is only stat()ed, never opened);
3. lock the state directory and read the journal: the same image into the same destination
   resumes after its last durable frame; anything else starts at frame 0, and the new journal is
   durable before the first byte is written;
4. stream the remaining frames (``stream``), each one durable and recorded before the next counts;
5. read the slot back past the page cache against the signed root hash (``readback``); a mismatch
   removes the journal, so that a rerun starts over.

On a resumed run the whole-file sha256 cannot be checked: a hashlib state does not survive a power
cut, and the bytes before the resume point are not fetched again. The per-frame sha256 digests,
signed in the same targets metadata, carry the verification then, and the read-back checks every
byte of the slot against the signed root hash either way; ``WriteResult.whole_file_checked`` says
which happened.

Not done here: making the slot unbootable before and bootable after (the update flow), the
kernel on the ESP, fetching and TUF (the source and the release metadata).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from updater.errors import DataError, DeviceError, VerificationError
from updater.records import dataclass
from updater.slotwrite import journal, readback
from updater.slotwrite.blockio import SlotIO
from updater.slotwrite.facts import ImageFacts
from updater.slotwrite.journal import Journal
from updater.slotwrite.region import Region, Target, refuse_unsafe, resolve
from updater.slotwrite.source import ByteSource
from updater.slotwrite.stream import Stream, WholeFileMismatch


class Phase(StrEnum):
    WRITE = "write"  # bytes: uncompressed bytes handed to the slot, of the image size
    VERIFY = "verify"  # bytes: data bytes read back and checked, of the hash offset


Progress = Callable[[Phase, int, int], None]
"""``progress(phase, done, total)``, called from the calling thread."""


@dataclass(frozen=True)
class WriteResult:
    first_frame: int  # where this run started; > 0 when it resumed
    frames: int
    bytes_written: int
    whole_file_checked: bool
    direct_io: bool  # the slot was written with O_DIRECT (else buffered, then dropped)
    journal_note: str | None = None  # why an existing journal was not used, if it was not


@contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(
            os.path.join(state_dir, journal.LOCKNAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise DeviceError(f"cannot use the state directory {state_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeviceError(
                f"another slot write holds {state_dir}/{journal.LOCKNAME}",
                hint="wait for it to finish",
            ) from None
        yield
    finally:
        os.close(fd)


def _start(state_dir: str, image: ImageFacts, dest: Target) -> tuple[Journal, str | None]:
    """The journal to continue, or a fresh one (made durable here) and why the old one was not."""
    fresh = Journal(image.identity(), dest.identity(), len(image.table.frames), 0)
    try:
        found = journal.load(state_dir)
    except DataError as exc:
        note: str | None = f"{exc.message}; starting from the first frame"
    else:
        if found is not None and found.resumes(fresh.image, fresh.destination, fresh.frames):
            return found, None
        note = None if found is None else "the journal is for another image or slot"
    journal.save(state_dir, fresh)
    return fresh, note


def write_image(
    source: ByteSource,
    image: ImageFacts,
    destination: Region,
    *,
    booted: Region | None,
    state_dir: str,
    progress: Progress | None = None,
    workers: int | None = None,
) -> WriteResult:
    """Write ``image`` from ``source`` into ``destination`` and verify it (see the module doc).

    ``booted`` is the running system's slot (None only where nothing is booted from this disk,
    as in an installer); ``workers`` is the number of read-back threads (default: one per core
    and one more; 1: none). Errors are typed by cause: VerificationError for bytes that are not the
    signed image, TransportError or DeviceError from the source, DeviceError for the slot, and
    SlotError for a refused destination.
    """
    image.check()
    dest = resolve(destination)
    refuse_unsafe(dest, resolve(booted) if booted is not None else None)
    if image.size > dest.size:
        raise DeviceError(
            f"the image is {image.size} bytes, {destination.path} holds only {dest.size}"
        )
    report = progress or (lambda phase, done, total: None)
    with _locked(state_dir):
        state, note = _start(state_dir, image, dest)
        first = state.frames_done
        whole_checked = False
        # The descriptor stays open through the read-back: on a block device it is exclusive,
        # so nothing can mount the slot between the write and its verification.
        with SlotIO(dest, write=True) as io:
            if first < state.frames:
                whole_checked = _stream(source, image, io, state, state_dir, report)
            try:
                readback.verify(
                    dest, image, workers=workers,
                    progress=lambda done: report(Phase.VERIFY, done, image.hash_offset),
                )  # fmt: skip
            except VerificationError:
                journal.remove(state_dir)
                raise
            direct = io.direct
    written = image.size - image.table.uncompressed_offset(first)
    return WriteResult(first, state.frames, written, whole_checked, direct, note)


def _stream(
    source: ByteSource,
    image: ImageFacts,
    io: SlotIO,
    state: Journal,
    state_dir: str,
    report: Progress,
) -> bool:
    def on_frame(index: int) -> None:
        journal.save(state_dir, Journal(state.image, state.destination, state.frames, index + 1))

    stream = Stream(
        source, image, io, state.frames_done, on_frame,
        lambda done: report(Phase.WRITE, done, image.size),
    )  # fmt: skip
    try:
        return stream.run().whole_file_checked
    except WholeFileMismatch:
        journal.remove(state_dir)
        raise


def clear_journal(state_dir: str) -> None:
    """Forget the progress of a write (the update flow calls it once the slot is activated)."""
    journal.remove(state_dir)

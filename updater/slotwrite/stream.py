"""The streaming pass: compressed frames in, their bytes on the slot, one durable frame at a time.

Three threads keep both cores busy; zstandard and hashlib release the GIL inside their C calls,
and what runs under the GIL is a few statements per source chunk or 4 MiB buffer:

- fetch: iterates the source from the first frame to write, cuts its bytes at the frame
  boundaries of the signed table, hashes each frame (and, when starting at frame 0, the whole
  file), and refuses a byte beyond the signed length. A frame's last bytes are passed on only
  after its sha256 matched (and, for the last frame, after the whole file's did), so a frame that
  does not match can never be completed;
- decompress (the calling thread): the decoder starts afresh at every frame, whose header must
  declare the table's size; output into page-aligned 4 MiB buffers, exactly that many bytes and
  not one more;
- write: pwrite of each buffer at its offset (O_DIRECT where possible); after a frame's last
  buffer and its verified end, fdatasync, then ``on_frame`` (the journal).

Measured for a 1 GiB image (579 MiB compressed, local file) on a 2-core VM: the threads take
0.67 s (fetch, both hashes), 0.70 s (decode) and 0.11 s (write) of CPU and run side by side; a
pure-Python thread keeps 80% of its speed while another decodes, so the decoder holds the GIL
only between calls. Processes would have to copy every decoded byte across (or map shared
buffers per frame) to save GIL hand-overs that cost little here; ``readback`` measures the
case where they might have mattered.

Bytes of a frame are decompressed and written before its last compressed byte, and hence its
hash, has arrived: holding a 32 MiB frame back would double the memory. They only reach the
inactive slot, which is unbootable while it is written, and no frame counts as done before its
hash matched: a rerun rewrites it, and the read-back checks every byte against the root hash.

Not done here: choosing the frame to start from, the journal's content, verity (``readback``).
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import threading
from collections.abc import Callable, Iterator
from typing import IO, TypeVar, cast

import zstandard

from updater import frames
from updater.errors import VerificationError
from updater.records import dataclass
from updater.slotwrite.blockio import SlotIO, aligned_buffer
from updater.slotwrite.facts import ImageFacts
from updater.slotwrite.source import ByteSource

BUFFER_SIZE = 4 << 20
BUFFERS = 3  # decompressed bytes in flight: 12 MiB of the command's 64 MiB budget
PIECES = 4  # source chunks in flight between fetch and decompress (256 KiB over HTTP)
READ_SIZE = 1 << 20  # what the decoder asks its input for at a time
POLL = 0.1  # seconds between checks for another thread's failure while waiting

T = TypeVar("T")


class WholeFileMismatch(VerificationError):
    """Every frame matched its signed sha256 but the whole file did not match its own: the signed
    metadata contradicts itself, and no frame of this image may be trusted on a resumed run."""


class _Stopped(Exception):
    """Another thread failed; this one unwinds without an error of its own."""


@dataclass(frozen=True)
class _Piece:
    data: memoryview
    frame: int
    last: bool  # the frame's final bytes: its sha256 has matched


@dataclass(frozen=True)
class _Failed:
    error: BaseException  # what ended the fetch: every piece before it is still good


@dataclass(frozen=True)
class _Buffer:
    memory: mmap.mmap
    size: int
    offset: int


@dataclass(frozen=True)
class _FrameEnd:
    frame: int


class _Crew:
    """What the threads share: the first failure, and waits that give up once there is one."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(exc, _Stopped):
                self.error = exc
        self.stop.set()

    def put(self, q: queue.Queue[T], item: T) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self, q: queue.Queue[T]) -> T:
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL)
            except queue.Empty:
                continue
        raise _Stopped


class _FrameInput:
    """The decoder's input: the bytes of one frame, read from the fetch thread's pieces."""

    def __init__(self, crew: _Crew, pieces: queue.Queue[_Piece | _Failed], index: int) -> None:
        self._crew, self._pieces, self.index = crew, pieces, index
        self._pending = memoryview(b"")
        self.ended = False
        self._failed: _Failed | None = None

    def _next(self) -> None:
        piece = self._failed or self._crew.get(self._pieces)
        if isinstance(piece, _Failed):
            self._failed = piece  # raised again to whoever reads on
            raise piece.error
        assert piece.frame == self.index, "pieces arrive in frame order"
        self._pending, self.ended = piece.data, piece.last

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes without consuming them (fewer only when the frame is shorter)."""
        while len(self._pending) < size and not self.ended:
            earlier = bytes(self._pending)
            self._next()
            if earlier:  # a header cut across pieces: rare, and only its first bytes are copied
                self._pending = memoryview(earlier + bytes(self._pending))
        return bytes(self._pending[:size])

    def read(self, size: int = -1) -> memoryview:
        while not self._pending and not self.ended:
            self._next()
        size = len(self._pending) if size < 0 else size
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def rest(self) -> int:
        """Consume the frame's bytes up to its verified end; returns how many were left."""
        count = len(self._pending)
        self._pending = memoryview(b"")
        while not self.ended:
            self._next()
            count += len(self._pending)
            self._pending = memoryview(b"")
        return count


@dataclass
class StreamResult:
    whole_file_checked: bool = False


class Stream:
    """One pass from frame ``first`` to the end; ``run`` returns when every frame is durable."""

    def __init__(
        self,
        source: ByteSource,
        image: ImageFacts,
        io: SlotIO,
        first: int,
        on_frame: Callable[[int], None],
        progress: Callable[[int], None],
    ) -> None:
        self.source, self.image, self.io, self.first = source, image, io, first
        self.on_frame, self.progress = on_frame, progress
        self.crew = _Crew()
        self.pieces: queue.Queue[_Piece | _Failed] = queue.Queue(PIECES)
        self.free: queue.Queue[mmap.mmap] = queue.Queue()
        self.writes: queue.Queue[_Buffer | _FrameEnd | None] = queue.Queue()
        self.result = StreamResult()
        self.scratch = bytearray(64 << 10)  # where a frame's surplus output would go

    def run(self) -> StreamResult:
        """Failures are orderly: a fetch failure reaches the decoder after every piece before it,
        and the writer finishes what the decoder queued, so every frame that arrived whole and
        matched its hash is durable and journaled before the first error is raised."""
        for _ in range(BUFFERS):
            self.free.put(aligned_buffer(BUFFER_SIZE))
        fetch = threading.Thread(target=self._fetch, name="slotwrite-fetch", daemon=True)
        write = threading.Thread(target=self._write, name="slotwrite-write", daemon=True)
        fetch.start()
        write.start()
        try:
            self._decompress()
        except BaseException as exc:  # noqa: B036 -- recorded, the first failure is re-raised
            self.crew.fail(exc)
        finally:
            self.writes.put(None)
        write.join()  # no write may happen after this returns
        # A fetch blocked in the network returns within the source's own timeout; it only
        # reads then, so it is not waited for after a failure.
        fetch.join(timeout=None if self.crew.error is None else POLL * 10)
        if self.crew.error is not None:
            raise self.crew.error
        return self.result

    # -- fetch thread --------------------------------------------------------------------------

    def _fetch(self) -> None:
        chunks: Iterator[bytes] | None = None
        try:
            chunks = self.source.open(self.image.table.compressed_offset(self.first))
            self._cut(chunks)
        except BaseException as exc:  # noqa: B036 -- handed to the decoder after the good pieces
            try:
                self.crew.put(self.pieces, _Failed(exc))
            except _Stopped:
                pass  # the decoder failed first and reports its own error
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _cut(self, chunks: Iterator[bytes]) -> None:
        table, image = self.image.table, self.image
        count = len(table.frames)
        whole = hashlib.sha256() if self.first == 0 else None
        index, frame = self.first, hashlib.sha256()
        need = table.frames[index].compressed_size
        for chunk in chunks:
            # Pieces are hashed here and decoded later in another thread: a source that refills
            # a mutable buffer would change them in between, so only immutable bytes are kept.
            view = memoryview(chunk if type(chunk) is bytes else bytes(chunk)).cast("B")
            while view:
                piece, view = view[:need], view[need:]
                frame.update(piece)
                if whole is not None:
                    whole.update(piece)
                need -= len(piece)
                if need:
                    self.crew.put(self.pieces, _Piece(piece, index, False))
                    continue
                if frame.hexdigest() != table.frames[index].sha256:
                    raise VerificationError(
                        f"frame {index} of the image does not match its signed sha256"
                    )
                if index == count - 1:
                    if view or any(len(rest) for rest in chunks):
                        raise VerificationError(
                            f"the image is longer than its signed {image.compressed_size} bytes"
                        )
                    if whole is not None and whole.hexdigest() != image.sha256:
                        raise WholeFileMismatch(
                            f"the image's sha256 is {whole.hexdigest()}, signed {image.sha256}"
                        )
                    self.result.whole_file_checked = whole is not None
                self.crew.put(self.pieces, _Piece(piece, index, True))
                index += 1
                if index < count:
                    frame, need = hashlib.sha256(), table.frames[index].compressed_size
        if index < count:
            received = table.compressed_offset(index + 1) - need
            raise VerificationError(
                f"the image ends after {received} of its signed {image.compressed_size} bytes"
            )

    # -- calling thread ------------------------------------------------------------------------

    def _decompress(self) -> None:
        table = self.image.table
        decoder = frames.decompressor(table.frame_size)
        for index in range(self.first, len(table.frames)):
            source = _FrameInput(self.crew, self.pieces, index)
            try:
                self._frame(decoder, source)
            except (VerificationError, zstandard.ZstdError) as exc:
                # The frame's own sha256 is the better witness: let the fetch thread finish the
                # frame, so that a mismatch there is the error reported.
                source.rest()
                if isinstance(exc, VerificationError):
                    raise
                raise VerificationError(
                    f"frame {index} matches its signed sha256 but is not zstd: {exc}"
                ) from None
            extra = source.rest()
            if extra:
                raise VerificationError(f"frame {index} has {extra} bytes after its zstd frame")
            self.crew.put(self.writes, _FrameEnd(index))

    def _frame(self, decoder: zstandard.ZstdDecompressor, source: _FrameInput) -> None:
        table, index = self.image.table, source.index
        expected = table.uncompressed_size(index)
        frames.check_header(source.peek(frames.HEADER_MAX), index, expected, table.frame_size)
        # stream_reader only calls read(); the stub asks for a whole file object.
        reader = decoder.stream_reader(
            cast(IO[bytes], source), read_size=READ_SIZE, read_across_frames=True, closefd=False
        )
        start = offset = table.uncompressed_offset(index)
        end = start + expected
        while offset < end:
            memory = self.crew.get(self.free)
            with memoryview(memory) as whole:
                view = whole[: min(BUFFER_SIZE, end - offset)]
                filled = 0
                while filled < len(view):
                    count = reader.readinto(view[filled:])
                    if not count:
                        raise VerificationError(
                            f"frame {index} ends after {offset + filled - start} of its "
                            f"{expected} bytes"
                        )
                    filled += count
                view.release()
            self.crew.put(self.writes, _Buffer(memory, filled, offset))
            offset += filled
            self.progress(offset)
        if reader.readinto(self.scratch):
            raise VerificationError(f"frame {index} holds more than its {expected} bytes")

    # -- write thread --------------------------------------------------------------------------

    def _write(self) -> None:
        """Write until the decoder's end marker, even after a failure elsewhere: what is queued
        was decoded from verified pieces. Only a failure here stops the others."""
        try:
            while (item := self.writes.get()) is not None:
                if isinstance(item, _FrameEnd):
                    self.io.sync()
                    self.on_frame(item.frame)
                    continue
                with memoryview(item.memory) as whole, whole[: item.size] as view:
                    self.io.write(view, item.offset)
                self.free.put(item.memory)
        except BaseException as exc:  # noqa: B036 -- handed to the calling thread, re-raised
            self.crew.fail(exc)

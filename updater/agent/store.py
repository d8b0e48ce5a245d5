"""The agent's files: its record (``STATE_DIR/agent.json``), the locks around it, and atomic writes.

- ``write_atomic``: temporary file in the same directory, fsync, rename, fsync of the directory,
  so that a power cut leaves the old or the new file, never a mix (also used for the metrics file
  and ``/run/reboot-required``).
- ``Store.running()``: one agent process at a time (an exclusive lock held for the process's
  life, on ``agent.run.lock``); a second one is refused with one line.
- ``Store.locked()``: a short exclusive lock (``agent.lock``) around each read-modify-write of the
  record, so ``updater agent forget`` can change the record while the agent runs.

This module does not interpret the record (``updater.agent.record``, ``updater.agent.machine``),
and imports that module only to read or write one: ``updater status`` on a machine whose agent
never ran asks only whether the file exists (start-up time).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from updater.errors import DeviceError, UpdaterError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path

    from updater.agent.record import Record

STATE_FILE = "agent.json"


class AgentRunning(UpdaterError):
    """Another agent process holds this state directory."""


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """``atomicfile.write`` creating the directory first; ``mode`` 0644 by default, so that
    node_exporter and status readers that are not root can read what the agent writes."""
    from updater import atomicfile

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    atomicfile.write(path, data, mode)


class Store:
    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> Record:
        """The record; a fresh one when the agent never ran. DataError when it is damaged."""
        from updater.agent import record

        try:
            with open(self.path, "rb") as f:
                data = f.read(record.MAX_BYTES + 1)
        except FileNotFoundError:
            return record.Record()
        except OSError as exc:
            raise DeviceError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            return record.loads(data)
        except UpdaterError as exc:
            raise type(exc)(f"{self.path}: {exc.message}",
                            hint="move the file away to start over (every blocked release "
                                 "is then offered again)") from None  # fmt: skip

    def save(self, rec: Record) -> None:
        from updater.agent import record

        write_atomic(self.path, record.dumps(rec))

    def _open(self, name: str) -> int:
        os.makedirs(self.dir, exist_ok=True)
        return os.open(os.path.join(self.dir, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = self._open("agent.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        fd = self._open("agent.run.lock")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 20, 0).decode(errors="replace").strip()
                raise AgentRunning(f"another updater agent is running (pid {pid or '?'})",
                                   hint="stop it first") from None  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

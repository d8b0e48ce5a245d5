"""Where a repository's files live: a directory (``DirStorage``) or memory (``MemoryStorage``).

Names are relative POSIX paths (``metadata/1.root.json``, ``keys/<keyid>.pem``). Every write is
atomic and durable in a directory: a temporary file in the same directory, fsync, rename, fsync
of the directory, so a crash leaves the old file or the new one, never a torn one (a client
that reads a torn ``timestamp.json`` would fail verification until the next publish). Private
files (keys) are created mode 0600 in a 0700 directory, never readable by anyone else for an
instant.

This module knows nothing of TUF; it only stores bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from updater.errors import UsageError

MAX_READ = 64 << 20  # metadata and indexes; images are streamed, never read whole


def _check_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts or str(path) != name:
        raise UsageError(f"{name!r} is not a plain relative name inside the repository")
    return name


class Storage(Protocol):
    def read(self, name: str) -> bytes: ...
    def exists(self, name: str) -> bool: ...
    def write(self, name: str, data: bytes, *, private: bool = False) -> None: ...
    def create(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...
    def rename(self, old: str, new: str, *, private: bool = False) -> None: ...
    def names(self, folder: str) -> list[str]: ...
    def locked(self) -> contextlib.AbstractContextManager[None]: ...


class DirStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_READ + 1)
        except FileNotFoundError:
            raise UsageError(f"{path}: missing from the repository") from None
        if len(data) > MAX_READ:
            raise UsageError(f"{path}: larger than {MAX_READ} bytes")
        return data

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def _mkdir(self, folder: Path, private: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
        if private:
            folder.chmod(0o700)  # an existing directory too: keys must not be listable by others

    def write(self, name: str, data: bytes, *, private: bool = False) -> None:
        with self._create(name, private) as f:
            f.write(data)

    def create(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self._create(name, False)

    @contextlib.contextmanager
    def _create(self, name: str, private: bool) -> Iterator[BinaryIO]:
        path = self._path(name)
        self._mkdir(path.parent, private)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if not private:
                tmp.chmod(0o644)  # served files: readable by the web server's user
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def rename(self, old: str, new: str, *, private: bool = False) -> None:
        source, dest = self._path(old), self._path(new)
        self._mkdir(dest.parent, private)
        os.replace(source, dest)
        _fsync_dir(dest.parent)
        _fsync_dir(source.parent)

    def names(self, folder: str) -> list[str]:
        path = self._path(folder)
        if not path.is_dir():
            return []
        return sorted(f"{folder}/{p.name}" for p in path.iterdir() if p.is_file())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One publisher at a time: two ``repo add`` runs would both write version N+1."""
        self._mkdir(self.root / "keys", True)
        fd = os.open(self.root / "keys" / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"{self.root}: another updater repo command is running") from None
            yield
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MemoryStorage:
    """A repository in a dict (tests, and the in-memory repositories clients are tested with).
    ``private`` records which names were written as private files."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.private: set[str] = set()

    def read(self, name: str) -> bytes:
        try:
            return self.files[_check_name(name)]
        except KeyError:
            raise UsageError(f"{name}: missing from the repository") from None

    def exists(self, name: str) -> bool:
        return _check_name(name) in self.files

    def write(self, name: str, data: bytes, *, private: bool = False) -> None:
        self.files[_check_name(name)] = bytes(data)
        if private:
            self.private.add(name)

    @contextlib.contextmanager
    def create(self, name: str) -> Iterator[BinaryIO]:
        buffer = io.BytesIO()
        yield buffer
        self.write(name, buffer.getvalue())

    def rename(self, old: str, new: str, *, private: bool = False) -> None:
        self.files[_check_name(new)] = self.files.pop(_check_name(old))
        self.private.discard(old)
        if private:
            self.private.add(new)

    def names(self, folder: str) -> list[str]:
        prefix = _check_name(folder) + "/"
        return sorted(n for n in self.files if n.startswith(prefix) and "/" not in n[len(prefix) :])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield

"""A copy of the repository in one file: an uncompressed tar of its ``metadata/`` and
``targets/`` directories (``tar -cf release.tar -C /srv/repo metadata targets``), read in
place, with exactly the verification of ``--repo URL``: python-tuf checks the metadata against
the trusted root, the slot writer checks the image against the signed hashes and root hash.

The archive is as hostile as a server. Its member table is read once and bounded (count, name
length); only regular files count, under ``metadata/`` or ``targets/``, with plain relative
names (an optional leading ``./`` is dropped) and without duplicates, since two members of one
name would make "the file" ambiguous. A member is read at its data offset, from an offset to its
signed length and never beyond (``updater.fetch.bounds``); a missing one is answered like HTTP
404. Compressed archives are refused: reading a member would mean decompressing everything
before it, and an image is streamed straight into the slot. Nothing is verified or extracted
here: python-tuf checks what it reads, the slot writer the image.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from tuf.api.exceptions import DownloadHTTPError

from updater.errors import DataError, TransportError
from updater.fetch.bounds import capped, check_start, longer, truncated
from updater.fetch.local import pread_chunks
from updater.fetch.source import StreamingFetcher
from updater.records import dataclass

SCHEME = "tar"
MAX_MEMBERS = 100_000
TOP = ("metadata", "targets")


@dataclass(frozen=True)
class Member:
    offset: int  # of the data in the archive
    size: int


def index(path: str) -> dict[str, Member]:
    """The archive's usable members by name (module docstring)."""
    try:
        with open(path, "rb") as f:
            head = f.read(262)
            if head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[:3] == b"BZh":
                raise DataError(f"{path} is compressed; give an uncompressed tar")
            f.seek(0)
            members: dict[str, Member] = {}
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for count, info in enumerate(tar, start=1):
                    if count > MAX_MEMBERS:
                        raise DataError(f"{path} has more than {MAX_MEMBERS} members")
                    name = _name(info.name)
                    if not info.isreg() or name is None:
                        continue
                    if name in members:
                        raise DataError(f"{path} holds {name} twice")
                    members[name] = Member(info.offset_data, info.size)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise DataError(f"{path} is not a tar archive: {exc}") from None
    if not any(n.startswith("metadata/") for n in members):
        raise DataError(f"{path} holds no metadata/ directory of a release repository")
    return members


def _name(raw: str) -> str | None:
    name = raw[2:] if raw.startswith("./") else raw
    parts = name.split("/")
    if len(name) > 4096 or parts[0] not in TOP or any(p in ("", ".", "..") for p in parts):
        return None
    return name


class ArchiveFetcher(StreamingFetcher):
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.members = index(self.path)

    def url(self, folder: str) -> str:
        return f"{SCHEME}:///{folder}/"

    def _member(self, url: str) -> tuple[str, Member]:
        parts = urlsplit(url)
        name = unquote(parts.path).lstrip("/")
        if parts.scheme != SCHEME or parts.netloc or _name(name) is None:
            raise TransportError(f"{url}: not a file of the repository archive")
        member = self.members.get(name)
        if member is None:
            raise DownloadHTTPError(f"not found in {self.path}: {name}", 404)
        return name, member

    def _fetch(self, url: str) -> Iterator[bytes]:
        name, member = self._member(url)
        return self._chunks(name, member, 0, member.size)

    def stream(self, url: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_start(start, length)
        name, member = self._member(url)
        if length is None:
            return self._chunks(name, member, start, member.size)
        if member.size != length:
            raise (longer if member.size > length else truncated)(url, length, member.size)
        return capped(self._chunks(name, member, start, length), url, start, length)

    def _chunks(self, name: str, member: Member, offset: int, end: int) -> Iterator[bytes]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"cannot read {self.path}: {exc.strerror}") from None
        base = member.offset
        return pread_chunks(fd, f"{name} in {self.path}", base + offset, base + end)

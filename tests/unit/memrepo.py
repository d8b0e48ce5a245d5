"""An in-memory release repository, built with the project's own publishing code, and a fake
fetcher serving it: client tests run without network or subprocess."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError

from updater.cmdline import USRHASH_OFFSETS
from updater.fetch.bounds import capped, check_start, longer, truncated
from updater.fetch.client import Endpoint, ReleaseClient
from updater.fetch.source import StreamingFetcher
from updater.records import dataclass
from updater.release import Release, VerityFacts, parse_version
from updater.repo import publish, repository
from updater.repo.image import UsrFacts
from updater.repo.repository import DEFAULT_EXPIRY, Expiry, Repository
from updater.repo.storage import MemoryStorage
from updater.verity import BLOCK_SIZE, Superblock, VerityParams, VerityTreeBuilder

MiB = 1 << 20
BASE = "mem://repo/"


@dataclass(frozen=True)
class Image:
    data: bytes
    facts: UsrFacts
    kernel: bytes


def make_image(version: int, fs_size: int = 5 * BLOCK_SIZE + 100, arch: str = "x86_64",
               fs: bytes | None = None) -> Image:  # fmt: skip
    """A USR image as the image builder makes one: a filesystem (a squashfs superblock with
    bytes_used, then random bytes; or ``fs``, a real one), padding to 4096, a verity superblock
    and tree from the project's own verity module; and a kernel carrying the root hash where
    GRUB reads it."""
    if fs is None:
        head = b"hsqs" + bytes(36) + fs_size.to_bytes(8, "little")
        body = random.Random(version).randbytes(fs_size - len(head))  # incompressible
        fs = head + body
    offset = -(-len(fs) // BLOCK_SIZE) * BLOCK_SIZE
    data = fs.ljust(offset, b"\0")
    params = VerityParams(offset // BLOCK_SIZE, b"")
    builder = VerityTreeBuilder(params)
    builder.update(data)
    tree = builder.finish()
    image = data + tree.hash_area(Superblock(params, uuid.UUID(int=version).bytes))
    root_hash = tree.root_hash.hex()
    kernel = bytearray(b"MZ" + bytes(8190))
    at = USRHASH_OFFSETS[arch]
    kernel[at : at + 64] = root_hash.encode()
    facts = UsrFacts("squashfs", len(image), VerityFacts(root_hash, offset))
    return Image(image, facts, bytes(kernel))


class MemoryFetcher(StreamingFetcher):
    """Serves a MemoryStorage as a web server serves a repository directory; ``requests``
    records every URL asked for."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage
        self.requests: list[tuple[str, int]] = []

    def _data(self, url: str) -> bytes:
        name = url.removeprefix(BASE)
        if name not in self.storage.files:
            raise DownloadHTTPError(f"HTTP 404 Not Found: {url}", 404)
        return self.storage.files[name]

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests.append((url, 0))
        return iter([self._data(url)])

    def stream(self, url: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_start(start, length)
        self.requests.append((url, start))
        data = self._data(url)
        if length is None:
            return iter([data[start:]])
        if len(data) != length:
            raise (longer if len(data) > length else truncated)(url, length, len(data))
        return capped(iter([data[start : start + 1000], data[start + 1000 :]]), url, start, length)


class MemoryRepo:
    """A repository in memory with helpers to publish releases into it."""

    def __init__(self, now: datetime | None = None, expiry: Expiry = DEFAULT_EXPIRY) -> None:
        self.storage = MemoryStorage()
        self.repo = repository.create(self.storage, expiry, now)
        self.fetcher = MemoryFetcher(self.storage)

    def reopen(self, now: datetime | None = None) -> Repository:
        """A fresh Repository on the same files (as a new ``updater repo`` run would be)."""
        self.repo = Repository(self.storage, now)
        return self.repo

    def add(
        self,
        version: str,
        *,
        channel: str = "stable",
        arch: str = "x86_64",
        initrd: bytes | None = b"initrd",
        image: Image | None = None,
        expiry: Expiry = DEFAULT_EXPIRY,
    ) -> Release:
        v = parse_version(version)
        img = image or make_image(v.key[0] * 100 + v.key[1], arch=arch)
        return publish.add_release(
            self.repo, channel=channel, arch=arch, version=v,
            usr=[img.data[i : i + 3000] for i in range(0, len(img.data), 3000)],
            facts=img.facts, kernel=img.kernel, initrd=initrd, frame_size=MiB, level=1,
            expiry=expiry,
        )  # fmt: skip

    def root(self) -> bytes:
        return self.storage.files["metadata/1.root.json"]

    def client(self, cache: Path, trusted_root: bytes | None = None) -> ReleaseClient:
        where = Endpoint(f"{BASE}metadata/", f"{BASE}targets/", self.fetcher)
        return ReleaseClient(where, cache, trusted_root or self.root())

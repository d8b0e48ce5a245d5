"""The release client: python-tuf's ``Updater`` over this project's fetchers, and what the
updater asks of a repository.

Trust starts at the root shipped in the OS image (``/usr/share/updater/root.json``); the
verified metadata is cached in the state directory (``STATE/metadata``), where python-tuf keeps
every root version it has followed. ``refresh`` runs TUF's client workflow (root chain,
timestamp, snapshot, targets: signatures, thresholds, expiry, rollback and mix-and-match
checks). Then:

- ``releases(channel, arch)``: the channel index (a signed target; ngclient has no public way
  to list targets) and each listed release read from its signed targets (``updater.release``
  validates them);
- ``target`` / ``signed``: the signed ``TargetFile`` of a path;
- ``download``: a small target (kernel, initrd) into a file, checked against its signed
  length and hashes before it takes its name;
- ``source``: the streaming byte source of a big target (the USR image), bounded by its
  signed length, hashed by the slot writer.

Delegated roles: python-tuf 7.0.1 verifies a cached delegated role against each delegator that
reaches it (a role trusted through one path no longer carries authority down another); the
dependency's lower bound requires that release, and a unit test covers the diamond case.

Every failure leaves as ``TransportError`` or ``VerificationError`` (``updater.fetch.failures``).
This module does not choose a release (``updater.release.choose``) and writes no slot.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater

from updater import release
from updater.config import ARCHES
from updater.errors import DataError, UsageError, VerificationError
from updater.fetch.archive import ArchiveFetcher
from updater.fetch.failures import at_edge
from updater.fetch.http import HttpFetcher, HttpPolicy
from updater.fetch.local import LocalFetcher
from updater.fetch.source import StreamingFetcher, TargetSource
from updater.records import dataclass
from updater.release import Release, SignedTarget, Version

MAX_ROOT_SIZE = 512 * 1024  # python-tuf's own bound for root metadata
METADATA_SUBDIR = "metadata"


@dataclass(frozen=True)
class Endpoint:
    """Where a repository's metadata and targets are, and the fetcher that reads them."""

    metadata_url: str
    targets_url: str
    fetcher: StreamingFetcher


def endpoint(repo: str, policy: HttpPolicy | None = None) -> Endpoint:
    """An ``http(s)://`` URL (``metadata/`` and ``targets/`` below it) or an absolute
    directory holding a copy of the repository."""
    if re.match(r"https?://", repo):
        base = repo.rstrip("/")
        return Endpoint(f"{base}/metadata/", f"{base}/targets/", HttpFetcher(policy))
    if repo.startswith("/"):
        if not Path(repo, METADATA_SUBDIR).is_dir():
            raise UsageError(f"{repo}: not a copy of a release repository (no metadata/ in it)")
        local = LocalFetcher(repo)
        return Endpoint(local.url("metadata"), local.url("targets"), local)
    if not repo:
        raise UsageError("no release repository", hint="pass --repo or set [update] repo")
    raise UsageError(f"repository {repo!r} is neither an http(s):// URL nor an absolute directory")


def archive_endpoint(path: str) -> Endpoint:
    """A repository copy in one uncompressed tar archive (``updater.fetch.archive``)."""
    fetcher = ArchiveFetcher(path)
    return Endpoint(fetcher.url("metadata"), fetcher.url("targets"), fetcher)


def read_trusted_root(path: str) -> bytes:
    """The shipped trust anchor (python-tuf verifies its content)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ROOT_SIZE + 1)
    except OSError as exc:
        raise DataError(f"trusted root {path}: {exc.strerror}") from None
    if len(data) > MAX_ROOT_SIZE:
        raise DataError(f"trusted root {path}: more than {MAX_ROOT_SIZE} bytes")
    return data


class ReleaseClient:
    """A TUF client of one repository, its verified metadata cached in ``metadata_dir``.

    ``trusted_root``: the bytes of the shipped root; None trusts the cached ``root.json``
    (the conformance protocol's ``init`` puts the trust anchor there)."""

    def __init__(
        self, where: Endpoint, metadata_dir: str | Path, trusted_root: bytes | None
    ) -> None:
        self.endpoint = where
        self.metadata_dir = Path(metadata_dir)
        self._consistent: bool | None = None
        with at_edge("loading the trusted root"):
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self._updater = Updater(
                str(self.metadata_dir),
                where.metadata_url,
                target_base_url=where.targets_url,
                fetcher=where.fetcher,
                bootstrap=trusted_root,
            )

    def refresh(self) -> None:
        with at_edge(f"refreshing metadata from {self.endpoint.metadata_url}"):
            self._updater.refresh()

    def target(self, path: str) -> TargetFile | None:
        """The signed TargetFile of ``path``, None when no role signs one (refreshes first
        when that has not happened)."""
        with at_edge(f"looking up {path}"):
            return self._updater.get_targetinfo(path)

    def signed(self, path: str) -> SignedTarget | None:
        target = self.target(path)
        if target is None:
            return None
        return SignedTarget(target.path, target.length, dict(target.hashes), target.custom)

    def _consistent_snapshot(self) -> bool:
        # python-tuf writes root.json only after verifying it: the newest trusted root. Read
        # once, after the refresh that produced the TargetFile being asked about (an Updater
        # refreshes once in its life, so the root cannot change after that).
        if self._consistent is None:
            with at_edge("reading the trusted root"):
                root = Metadata[Root].from_file(str(self.metadata_dir / "root.json")).signed
            self._consistent = bool(root.consistent_snapshot)
        return self._consistent

    def url(self, target: TargetFile) -> str:
        """Where the bytes of ``target`` are, named as python-tuf's ngclient names them (with
        consistent snapshots: the first signed hash before the file name)."""
        name = target.path
        if self._consistent_snapshot():
            folder, sep, base = name.rpartition("/")
            name = f"{folder}{sep}{next(iter(target.hashes.values()))}.{base}"
        return self.endpoint.targets_url + name

    def source(self, target: TargetFile) -> TargetSource:
        return TargetSource(self.endpoint.fetcher, target.path, self.url(target), target.length)

    def read(self, target: TargetFile) -> bytes:
        """A small target's bytes in memory, checked against its signed length and hashes."""
        with at_edge(f"fetching {target.path}"):
            data = b"".join(self.source(target).open())
            target.verify_length_and_hashes(data)
        return data

    def download(self, target: TargetFile, dest: str | Path) -> Path:
        """``target`` into the file ``dest``: streamed into a temporary file beside it,
        checked against the signed length and hashes, fsynced, then renamed; a ``dest`` that
        already holds exactly the signed bytes is kept without fetching it again."""
        dest = Path(dest)
        if _holds(dest, target):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "w+b") as out:
                with at_edge(f"fetching {target.path}"):
                    for chunk in self.source(target).open():
                        out.write(chunk)
                    out.flush()
                    out.seek(0)
                    target.verify_length_and_hashes(out)
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dirfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return dest

    def releases(self, channel: str, arch: str) -> list[Release] | None:
        """The releases the ``channel``/``arch`` index lists, oldest first; None when the
        repository has no such index."""
        index = self.target(release.index_path(channel, arch))
        if index is None:
            return None
        if index.length > release.MAX_INDEX_SIZE:
            raise VerificationError(
                f"index {index.path}: signed length {index.length} exceeds {release.MAX_INDEX_SIZE}"
            )
        entries = release.parse_index(self.read(index), channel, arch)
        return [release.read_release(channel, arch, e.version, self.signed) for e in entries]


def _holds(path: Path, target: TargetFile) -> bool:
    try:
        with path.open("rb") as f:
            target.verify_length_and_hashes(f)
        return True
    except (OSError, LengthOrHashMismatchError):
        return False


def offered(
    lookup: Callable[[str, str], list[Release] | None], channel: str, arch: str, pin: Version | None
) -> list[Release]:
    """The releases ``release.choose`` needs to decide: this architecture's, and only when
    they cannot answer (none at all, or no pinned version among them) the other
    architectures' too, so that "only for arm64" is said rather than "nothing to do"."""
    mine = lookup(channel, arch) or []
    if mine and (pin is None or any(r.version == pin for r in mine)):
        return mine
    return mine + [r for other in ARCHES if other != arch for r in lookup(channel, other) or []]


def open_client(repo: str, trusted_root: str, state_dir: str, policy: HttpPolicy) -> ReleaseClient:
    """The client the commands use: ``[update]`` settings, command-line options applied."""
    where = endpoint(repo, policy)
    return ReleaseClient(where, Path(state_dir) / METADATA_SUBDIR, read_trusted_root(trusted_root))

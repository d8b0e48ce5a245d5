"""The four top-level TUF roles of a release repository: create, change, re-sign, rotate keys.

Files, with consistent snapshots (what python-tuf's client fetches):

- ``metadata/N.root.json``: every root version (a client walks them one by one to follow a key
  rotation); ``metadata/root.json`` is a copy of the newest, the file to ship as trusted root;
- ``metadata/timestamp.json``: the only unversioned file a client fetches;
- ``metadata/N.snapshot.json``, ``metadata/N.targets.json``;
- ``targets/DIR/<sha256>.NAME``: every target file under its hash.

Old versions are never deleted: a client that read timestamp N a moment ago still finds the
snapshot, targets and files it points to while N+1 is being written.

Every change writes in dependency order, each file atomically: target files, then targets,
snapshot, and the timestamp last. The timestamp is the commit point; a crash before it leaves
clients on the previous complete state, and the next change simply writes the same versions
again. The newest root is found by listing ``N.root.json`` (the served truth), not from the
convenience copy.

Expiry: each role a command writes gets ``now + days`` (``--expires-days``) or its default
period (``DEFAULT_DAYS``); ``resign`` keeps expiry dates. Signing and serialising are
python-tuf's Metadata API and securesystemslib's signers; this module only decides versions,
expiry, which keys sign, and file names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from updater.errors import UsageError
from updater.records import dataclass
from updater.repo import keys
from updater.repo.storage import Storage

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
DEFAULT_DAYS = {Root.type: 365, Targets.type: 90, Snapshot.type: 30, Timestamp.type: 7}
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CHUNK = 4 << 20

_ROOT_FILE = re.compile(r"metadata/([1-9][0-9]*)\.root\.json")


@dataclass(frozen=True)
class Expiry:
    """How a command sets the expiry of the roles it writes: ``days`` from now (None: each
    role's default period), or ``keep`` the dates they have."""

    days: int | None = None
    keep: bool = False

    def apply(self, signed: Signed, now: datetime) -> None:
        if not self.keep:
            days = self.days if self.days is not None else DEFAULT_DAYS[signed.type]
            signed.expires = now + timedelta(days=days)


DEFAULT_EXPIRY = Expiry()


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _digest(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def target_file_name(path: str, sha256: str) -> str:
    """Where a target is stored under consistent snapshots: its hash before its name, as
    python-tuf's client (``prefix_targets_with_hash``) asks for it."""
    folder, _, name = path.rpartition("/")
    return f"{TARGETS_DIR}/{folder + '/' if folder else ''}{sha256}.{name}"


class Repository:
    """A repository in ``storage``; ``now`` is the moment every expiry is counted from."""

    def __init__(self, storage: Storage, now: datetime | None = None) -> None:
        self.storage = storage
        self.now = now or utc_now()
        self._cache: dict[str, Metadata[Any]] = {}

    # ------------------------------------------------------------------------------ reading

    def _parse(self, name: str, kind: type[Signed]) -> Metadata[Any]:
        try:
            md: Metadata[Any] = Metadata.from_bytes(self.storage.read(name))
        except DeserializationError as exc:
            raise UsageError(f"{name}: not TUF metadata: {exc}") from None
        if not isinstance(md.signed, kind):
            raise UsageError(f"{name}: holds {md.signed.type} metadata, not {kind.type}")
        return md

    def root_md(self) -> Metadata[Root]:
        if Root.type not in self._cache:
            versions = [
                int(m.group(1))
                for m in map(_ROOT_FILE.fullmatch, self.storage.names(METADATA_DIR))
                if m
            ]
            if not versions:
                raise UsageError(
                    "not a repository: no metadata/N.root.json", hint="updater repo init"
                )
            self._cache[Root.type] = self._parse(f"{METADATA_DIR}/{max(versions)}.root.json", Root)
        md: Metadata[Root] = self._cache[Root.type]
        return md

    def timestamp_md(self) -> Metadata[Timestamp]:
        if Timestamp.type not in self._cache:
            self._cache[Timestamp.type] = self._parse(f"{METADATA_DIR}/timestamp.json", Timestamp)
        md: Metadata[Timestamp] = self._cache[Timestamp.type]
        return md

    def snapshot_md(self) -> Metadata[Snapshot]:
        if Snapshot.type not in self._cache:
            version = self.timestamp_md().signed.snapshot_meta.version
            self._cache[Snapshot.type] = self._parse(
                f"{METADATA_DIR}/{version}.snapshot.json", Snapshot
            )
        md: Metadata[Snapshot] = self._cache[Snapshot.type]
        return md

    def targets_md(self) -> Metadata[Targets]:
        if Targets.type not in self._cache:
            meta = self.snapshot_md().signed.meta.get("targets.json")
            if meta is None:
                raise UsageError("snapshot lists no targets.json")
            self._cache[Targets.type] = self._parse(
                f"{METADATA_DIR}/{meta.version}.targets.json", Targets
            )
        md: Metadata[Targets] = self._cache[Targets.type]
        return md

    def load(self, role: str) -> Metadata[Any]:
        loaders: Mapping[str, Callable[[], Metadata[Any]]] = {
            Root.type: self.root_md,
            Targets.type: self.targets_md,
            Snapshot.type: self.snapshot_md,
            Timestamp.type: self.timestamp_md,
        }
        return loaders[role]()

    def read_target(self, target: TargetFile) -> bytes:
        """The stored bytes of a (small) target, checked against its signed length and hash."""
        data = self.storage.read(target_file_name(target.path, target.hashes["sha256"]))
        target.verify_length_and_hashes(data)
        return data

    # ------------------------------------------------------------------------------ writing

    def _signers(self, role: str, root: Root) -> list[Signer]:
        return [keys.load(self.storage, root.get_key(k)) for k in root.roles[role].keyids]

    def _write(self, md: Metadata[Any], extra_signers: Iterable[Signer] = ()) -> bytes:
        """Sign ``md`` with its role's keys (named by the newest root, or by itself for root)
        and store it under its consistent-snapshot name."""
        signed = md.signed
        root = signed if isinstance(signed, Root) else self.root_md().signed
        md.signatures.clear()
        for signer in [*self._signers(signed.type, root), *extra_signers]:
            md.sign(signer, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        if signed.type == Timestamp.type:
            self.storage.write(f"{METADATA_DIR}/timestamp.json", data)
        else:
            self.storage.write(f"{METADATA_DIR}/{signed.version}.{signed.type}.json", data)
        if signed.type == Root.type:
            self.storage.write(f"{METADATA_DIR}/root.json", data)
        self._cache[signed.type] = md
        return data

    def _next(self, md: Metadata[Any], expiry: Expiry) -> None:
        md.signed.version += 1
        expiry.apply(md.signed, self.now)

    def put_target(self, path: str, chunks: Iterable[bytes], custom: Any = None) -> TargetFile:
        """Store a target file streamed from ``chunks`` under its hash; return its TargetFile
        (not yet in any metadata: ``change_targets`` publishes it)."""
        folder, _, name = path.rpartition("/")
        partial = f"{TARGETS_DIR}/{folder + '/' if folder else ''}.partial.{name}"
        sha = hashlib.sha256()
        length = 0
        with self.storage.create(partial) as out:
            for chunk in chunks:
                sha.update(chunk)
                out.write(chunk)
                length += len(chunk)
        fields = {"custom": custom} if custom is not None else None
        target = TargetFile(length, {"sha256": sha.hexdigest()}, path, fields)
        self.storage.rename(partial, target_file_name(path, sha.hexdigest()))
        return target

    def change_targets(self, edit: Callable[[Targets], None], expiry: Expiry) -> None:
        """A new targets version with ``edit`` applied, then snapshot and timestamp."""
        md = self.targets_md()
        edit(md.signed)
        self._next(md, expiry)
        self._write(md)
        self._publish_snapshot(expiry)

    def _publish_snapshot(self, expiry: Expiry) -> None:
        data = self.storage.read(f"{METADATA_DIR}/{self.targets_md().signed.version}.targets.json")
        md = self.snapshot_md()
        md.signed.meta["targets.json"] = MetaFile(
            self.targets_md().signed.version, len(data), _digest(data)
        )
        self._next(md, expiry)
        self._write(md)
        self._publish_timestamp(expiry)

    def _publish_timestamp(self, expiry: Expiry) -> None:
        version = self.snapshot_md().signed.version
        data = self.storage.read(f"{METADATA_DIR}/{version}.snapshot.json")
        md = self.timestamp_md()
        md.signed.snapshot_meta = MetaFile(version, len(data), _digest(data))
        self._next(md, expiry)
        self._write(md)

    def renew(self, role: str, expiry: Expiry) -> None:
        """A new version of ``role`` signed with the keys root names now (``expire`` with
        days, ``resign`` with ``keep``), and of the roles that pin it."""
        if role == Root.type:
            md = self.root_md()
            self._next(md, expiry)
            self._write(md)
        elif role == Targets.type:
            self.change_targets(lambda _: None, expiry)
        elif role == Snapshot.type:
            self._publish_snapshot(expiry)
        elif role == Timestamp.type:
            self._publish_timestamp(expiry)
        else:
            raise UsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")

    def rotate(self, role: str, expiry: Expiry) -> str:
        """Replace ``role``'s key with a new one; return the new key id.

        A new root version names the new key. For root itself it is signed by the old and the
        new key: clients verify root N+1 with root N's keys and with its own, which is how they
        follow the rotation. For another role, root is signed by the root key and the role is
        then published again with its new key (old signatures no longer count)."""
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        md = self.root_md()
        root = md.signed
        old_signers = self._signers(Root.type, root) if role == Root.type else []
        old_ids = list(root.roles[role].keyids)
        new = keys.generate(self.storage)
        for keyid in old_ids:
            root.revoke_key(keyid, role)
        root.add_key(new.public_key, role)
        self._next(md, expiry)
        self._write(md, extra_signers=old_signers)
        still_used = {k for r in root.roles.values() for k in r.keyids}
        for keyid in old_ids:
            if keyid not in still_used:
                keys.retire(self.storage, keyid)
        if role != Root.type:
            self.renew(role, expiry)
        return new.public_key.keyid


def create(storage: Storage, expiry: Expiry, now: datetime | None = None) -> Repository:
    """A new repository: one new ed25519 key per role, root/targets/snapshot/timestamp v1."""
    if storage.names(METADATA_DIR):
        raise UsageError("already a repository (metadata/ is not empty)")
    repo = Repository(storage, now)
    root = Root(expires=repo.now, consistent_snapshot=True)
    for role in ROLES:
        root.add_key(keys.generate(storage).public_key, role)
    expiry.apply(root, repo.now)
    repo._write(Metadata(root))
    targets = Targets(expires=repo.now)
    expiry.apply(targets, repo.now)
    repo._write(Metadata(targets))
    targets_data = storage.read(f"{METADATA_DIR}/1.targets.json")
    snapshot = Snapshot(
        expires=repo.now,
        meta={"targets.json": MetaFile(1, len(targets_data), _digest(targets_data))},
    )
    expiry.apply(snapshot, repo.now)
    snapshot_data = repo._write(Metadata(snapshot))
    timestamp = Timestamp(
        expires=repo.now, snapshot_meta=MetaFile(1, len(snapshot_data), _digest(snapshot_data))
    )
    expiry.apply(timestamp, repo.now)
    repo._write(Metadata(timestamp))
    return repo

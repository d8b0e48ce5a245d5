"""Publishing: the repository's roles, versions, keys, expiry and rotation, checked with
python-tuf's own Metadata API as the oracle (signatures, thresholds), and the release's files
checked with zstandard (frames) and hashlib."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from tests.unit.memrepo import MemoryRepo, MiB, make_image
from updater.errors import UsageError
from updater.release import parse_index
from updater.repo.repository import DEFAULT_DAYS, Expiry, Repository, create
from updater.repo.storage import DirStorage, MemoryStorage

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ROLES = ("root", "targets", "snapshot", "timestamp")


def md(storage: MemoryStorage, name: str) -> Metadata[Any]:
    return Metadata.from_bytes(storage.files[f"metadata/{name}"])


def check_signed(root: Root, role: str, metadata: Metadata[Any]) -> None:
    """python-tuf's verification: signed by the threshold of keys root names for role."""
    root.verify_delegate(role, metadata.signed_bytes, metadata.signatures)


def test_init_makes_four_roles_each_with_its_own_key() -> None:
    m = MemoryRepo(now=NOW)
    files = m.storage.files
    assert sorted(n for n in files if n.startswith("metadata/")) == [
        "metadata/1.root.json", "metadata/1.snapshot.json", "metadata/1.targets.json",
        "metadata/root.json", "metadata/timestamp.json",
    ]  # fmt: skip
    root = md(m.storage, "1.root.json").signed
    assert root.consistent_snapshot is True and root.version == 1
    keyids = [root.roles[r].keyids[0] for r in ROLES]
    assert len(set(keyids)) == 4 and all(root.roles[r].threshold == 1 for r in ROLES)
    assert all(root.keys[k].keytype == "ed25519" for k in keyids)
    # private keys only under keys/, written as private files; nothing private is served
    assert m.storage.private == {f"keys/{k}.pem" for k in keyids}
    assert not any(b"PRIVATE" in data for n, data in files.items() if not n.startswith("keys/"))
    for role, name in zip(ROLES, ("1.root.json", "1.targets.json", "1.snapshot.json",
                                  "timestamp.json"), strict=True):  # fmt: skip
        signed = md(m.storage, name)
        check_signed(root, role, signed)
        assert signed.signed.expires == NOW + timedelta(days=DEFAULT_DAYS[role])
    assert files["metadata/root.json"] == files["metadata/1.root.json"]


def test_init_refuses_an_existing_repository() -> None:
    m = MemoryRepo()
    with pytest.raises(UsageError, match="already a repository"):
        create(m.storage, Expiry())


def test_expires_days_applies_to_every_role_written() -> None:
    m = MemoryRepo(now=NOW, expiry=Expiry(days=3))
    for name in ("1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"):
        assert md(m.storage, name).signed.expires == NOW + timedelta(days=3)


def test_add_publishes_a_release_in_one_targets_version() -> None:
    m = MemoryRepo(now=NOW)
    image = make_image(1, fs_size=2 * MiB + 5000)
    m.add("1.0.1", image=image)
    files = m.storage.files
    targets = md(m.storage, "2.targets.json").signed
    assert sorted(targets.targets) == [
        "stable/x86_64/1.0.1/initrd", "stable/x86_64/1.0.1/usr.img.zst",
        "stable/x86_64/1.0.1/vmlinuz", "stable/x86_64/index.json",
    ]  # fmt: skip
    # snapshot pins targets v2 by length and hash, timestamp pins snapshot v2 the same way
    snapshot = md(m.storage, "2.snapshot.json").signed
    meta = snapshot.meta["targets.json"]
    assert meta.version == 2 and meta.length == len(files["metadata/2.targets.json"])
    assert meta.hashes == {"sha256": hashlib.sha256(files["metadata/2.targets.json"]).hexdigest()}
    timestamp = md(m.storage, "timestamp.json").signed
    assert timestamp.version == 2 and timestamp.snapshot_meta.version == 2
    assert md(m.storage, "root.json").signed.version == 1
    # every target under its hash (consistent snapshots), the bytes as signed
    for path, target in targets.targets.items():
        folder, _, name = path.rpartition("/")
        data = files[f"targets/{folder}/{target.hashes['sha256']}.{name}"]
        target.verify_length_and_hashes(data)
    usr = targets.targets["stable/x86_64/1.0.1/usr.img.zst"]
    compressed = files[f"targets/stable/x86_64/1.0.1/{usr.hashes['sha256']}.usr.img.zst"]
    custom = usr.custom["updater"]
    # independent frames: each one alone decompresses to its slice of the image
    offset = 0
    for i, (length, sha) in enumerate(custom["frames"]):
        frame = compressed[offset : offset + length]
        assert hashlib.sha256(frame).hexdigest() == sha
        assert zstandard.frame_content_size(frame) == min(MiB, len(image.data) - i * MiB)
        plain = zstandard.ZstdDecompressor().decompress(frame)
        assert plain == image.data[i * MiB : i * MiB + len(plain)]
        offset += length
    assert offset == len(compressed) == usr.length
    assert len(custom["frames"]) == 3 and custom["frame_size"] == MiB
    assert custom["size"] == len(image.data) and custom["fs_type"] == "squashfs"
    assert custom["verity"]["root_hash"] == image.kernel[0x40:0x80].decode()
    assert custom["verity"]["hash_offset"] == 2 * MiB + 8192
    kernel = targets.targets["stable/x86_64/1.0.1/vmlinuz"]
    assert kernel.custom == {"updater": {"format": 1, "kind": "kernel", "version": "1.0.1",
                                         "channel": "stable", "arch": "x86_64"}}  # fmt: skip
    index = targets.targets["stable/x86_64/index.json"]
    index_data = files[f"targets/stable/x86_64/{index.hashes['sha256']}.index.json"]
    assert json.loads(index_data)["releases"] == [
        {"version": "1.0.1", "usr": "stable/x86_64/1.0.1/usr.img.zst"}
    ]


def test_second_release_extends_the_index_and_keeps_the_first() -> None:
    m = MemoryRepo()
    m.add("2")
    m.add("10", initrd=None)
    m.add("3", channel="beta", arch="arm64")
    repo = m.reopen()
    targets = repo.targets_md().signed
    index = repo.read_target(targets.targets["stable/x86_64/index.json"])
    assert [str(e.version) for e in parse_index(index, "stable", "x86_64")] == ["2", "10"]
    assert "stable/x86_64/10/initrd" not in targets.targets
    assert "stable/x86_64/2/initrd" in targets.targets
    assert "beta/arm64/index.json" in targets.targets
    assert repo.timestamp_md().signed.version == 4


@pytest.mark.parametrize("again", ["2", "2.0", "2.0.0.0"])
def test_a_published_version_is_immutable(again: str) -> None:
    m = MemoryRepo()
    m.add("2")
    before = dict(m.storage.files)
    with pytest.raises(UsageError, match=f"release {again} is already published"):
        m.add(again)
    assert {n: d for n, d in m.storage.files.items() if ".partial." not in n} == before


def test_expire_renews_and_cascades() -> None:
    m = MemoryRepo(now=NOW)
    later = NOW + timedelta(days=5)
    repo = m.reopen(later)
    repo.renew("timestamp", Expiry())
    ts = md(m.storage, "timestamp.json").signed
    assert ts.version == 2 and ts.expires == later + timedelta(days=7)
    assert ts.snapshot_meta.version == 1
    repo.renew("targets", Expiry(days=2))
    assert md(m.storage, "2.targets.json").signed.expires == later + timedelta(days=2)
    assert md(m.storage, "2.snapshot.json").signed.meta["targets.json"].version == 2
    assert md(m.storage, "timestamp.json").signed.snapshot_meta.version == 2
    repo.renew("root", Expiry())
    assert md(m.storage, "2.root.json").signed.expires == later + timedelta(days=365)
    assert md(m.storage, "root.json").signed.version == 2


def test_resign_keeps_expiry() -> None:
    m = MemoryRepo(now=NOW)
    repo = m.reopen(NOW + timedelta(days=1))
    repo.renew("snapshot", Expiry(keep=True))
    assert md(m.storage, "2.snapshot.json").signed.expires == NOW + timedelta(days=30)
    assert md(m.storage, "timestamp.json").signed.expires == NOW + timedelta(days=7)


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_rotating_a_role_key(role: str) -> None:
    m = MemoryRepo()
    m.add("1")
    old_root = md(m.storage, "1.root.json").signed
    old_key = old_root.roles[role].keyids[0]
    new_key = m.repo.rotate(role, Expiry(keep=True))
    new_root_md = md(m.storage, "2.root.json")
    new_root = new_root_md.signed
    assert new_root.roles[role].keyids == [new_key] and old_key not in new_root.keys
    # root v2 is signed by the (unchanged) root key, as root v1 demands
    check_signed(old_root, "root", new_root_md)
    # the role is published again, signed by the new key only
    names = {"targets": "3.targets.json", "snapshot": "3.snapshot.json"}
    check_signed(new_root, role, md(m.storage, names.get(role, "timestamp.json")))
    with pytest.raises(UnsignedMetadataError):
        check_signed(old_root, role, md(m.storage, names.get(role, "timestamp.json")))
    assert f"keys/retired/{old_key}.pem" in m.storage.private
    assert f"keys/{old_key}.pem" not in m.storage.files


def test_rotating_the_root_key_signs_with_old_and_new() -> None:
    m = MemoryRepo()
    old_root = md(m.storage, "1.root.json").signed
    new_key = m.repo.rotate("root", Expiry(keep=True))
    new_md = md(m.storage, "2.root.json")
    check_signed(old_root, "root", new_md)  # what a client trusting v1 checks
    check_signed(new_md.signed, "root", new_md)  # and the new root's own threshold
    assert new_md.signed.roles["root"].keyids == [new_key]
    # the next root version needs only the new key
    m.repo.renew("root", Expiry(keep=True))
    v3 = md(m.storage, "3.root.json")
    check_signed(new_md.signed, "root", v3)
    assert len(v3.signatures) == 1


def test_newest_root_comes_from_the_versioned_files() -> None:
    """root.json is a convenience copy; after a crash between the two writes the versioned
    file wins, so the next version is never written twice."""
    m = MemoryRepo()
    m.repo.renew("root", Expiry())
    m.storage.files["metadata/root.json"] = m.storage.files["metadata/1.root.json"]
    m.reopen().renew("root", Expiry())
    assert md(m.storage, "3.root.json").signed.version == 3


def test_missing_private_key_is_a_clear_error() -> None:
    m = MemoryRepo()
    for name in [n for n in m.storage.files if n.startswith("keys/")]:
        del m.storage.files[name]
    with pytest.raises(UsageError, match="no private key keys/"):
        m.reopen().renew("timestamp", Expiry())


def test_not_a_repository() -> None:
    with pytest.raises(UsageError, match="not a repository"):
        Repository(MemoryStorage()).root_md()


def test_directory_storage_modes_and_atomicity(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = DirStorage(root)
    repo = create(storage, Expiry())
    repo.renew("timestamp", Expiry())
    mode = stat.S_IMODE
    assert mode((root / "keys").stat().st_mode) == 0o700
    for key in (root / "keys").glob("*.pem"):
        assert mode(key.stat().st_mode) == 0o600
    for served in (root / "metadata").iterdir():
        assert mode(served.stat().st_mode) == 0o644
    assert sorted(p.name for p in (root / "metadata").iterdir() if p.name.startswith(".")) == []
    with pytest.raises(UsageError, match="plain relative name"):
        storage.read("../etc/passwd")
    # a lock holder keeps a second publisher out
    with storage.locked(), pytest.raises(UsageError, match="another updater repo command"):
        with DirStorage(root).locked():
            pass
    assert os.listdir(root / "keys").count(".lock") == 1

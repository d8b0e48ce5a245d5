"""The release client against an in-memory repository made with ``updater.repo`` and served by
a fake fetcher: listing, verified downloads, the byte source, and every metadata attack of the
TUF threat model ending as one clear error of the right class."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer

from tests.unit.memrepo import MemoryRepo, make_image
from updater.errors import ReleaseError, TransportError, VerificationError
from updater.fetch.client import ReleaseClient, offered
from updater.release import choose, parse_version
from updater.repo import keys
from updater.repo.repository import Expiry


@pytest.fixture
def repo() -> MemoryRepo:
    m = MemoryRepo()
    m.add("1")
    m.add("2")
    return m


def client(m: MemoryRepo, tmp_path: Path) -> ReleaseClient:
    return m.client(tmp_path / "cache")


def test_lists_releases_and_downloads_verified_targets(repo: MemoryRepo, tmp_path: Path) -> None:
    c = client(repo, tmp_path)
    c.refresh()
    found = c.releases("stable", "x86_64")
    assert found is not None and [str(r.version) for r in found] == ["1", "2"]
    two = found[1]
    kernel = c.target(two.kernel.path)
    assert kernel is not None
    dest = c.download(kernel, tmp_path / "out" / "vmlinuz")
    assert dest.read_bytes() == make_image(200).kernel
    assert [p.name for p in dest.parent.iterdir()] == ["vmlinuz"]  # no temporary file left
    # already there with the signed bytes: not fetched again
    asked = len(repo.fetcher.requests)
    c.download(kernel, dest)
    assert len(repo.fetcher.requests) == asked
    assert c.releases("stable", "arm64") is None
    # the cache holds the verified top-level metadata under unversioned names
    cache = tmp_path / "cache"
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= {
        p.name for p in cache.iterdir()
    }


def test_usr_source_streams_from_any_offset(repo: MemoryRepo, tmp_path: Path) -> None:
    c = client(repo, tmp_path)
    usr = c.target("stable/x86_64/2/usr.img.zst")
    assert usr is not None
    name = f"targets/stable/x86_64/2/{usr.hashes['sha256']}.usr.img.zst"
    data = repo.storage.files[name]
    source = c.source(usr)
    assert source.length == len(data) and source.url.endswith(name.removeprefix("targets/"))
    for start in (0, 1, len(data) - 1, len(data)):
        assert b"".join(source.open(start)) == data[start:]
    with pytest.raises(ValueError, match="outside"):
        source.open(len(data) + 1)


def test_a_new_client_sees_a_new_release(repo: MemoryRepo, tmp_path: Path) -> None:
    client(repo, tmp_path).refresh()
    repo.add("3")
    later = client(repo, tmp_path).releases("stable", "x86_64")
    assert later is not None and str(later[-1].version) == "3"


def test_follows_key_rotations(repo: MemoryRepo, tmp_path: Path) -> None:
    """A client trusting root v1 follows a root key rotation (v2 signed by old and new key)
    and a timestamp key rotation (v3), and keeps working from its cache afterwards."""
    client(repo, tmp_path).refresh()
    repo.repo.rotate("root", Expiry(keep=True))
    repo.repo.rotate("timestamp", Expiry(keep=True))
    c = client(repo, tmp_path)
    c.refresh()
    assert json.loads((tmp_path / "cache" / "root.json").read_bytes())["signed"]["version"] == 3
    assert c.releases("stable", "x86_64") is not None


def test_choice_over_the_real_client(repo: MemoryRepo, tmp_path: Path) -> None:
    repo.add("5", arch="arm64")
    repo.add("7", channel="beta", arch="arm64")
    c = client(repo, tmp_path)
    v = parse_version
    pick = choose(offered(c.releases, "stable", "x86_64", None), arch="x86_64", booted=v("1"))
    assert pick.release is not None and str(pick.release.version) == "2"
    with pytest.raises(ReleaseError, match="release 5 is for arm64"):
        choose(offered(c.releases, "stable", "x86_64", v("5")), arch="x86_64", booted=v("1"),
               pin=v("5"))  # fmt: skip
    with pytest.raises(ReleaseError, match="downgrade refused"):
        choose(offered(c.releases, "stable", "x86_64", v("1")), arch="x86_64", booted=v("2"),
               pin=v("1"))  # fmt: skip
    with pytest.raises(ReleaseError, match="the channel has releases only for arm64"):
        choose(offered(c.releases, "beta", "x86_64", None), arch="x86_64", booted=v("1"))


# --------------------------------------------------------------------------- metadata attacks

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)


def resign(m: MemoryRepo, name: str, key_role: str, **fields: Any) -> None:
    """Rewrite metadata/NAME as its next version with ``fields`` changed, signed with the key
    of ``key_role``."""
    md: Metadata[Any] = Metadata.from_bytes(m.storage.files[f"metadata/{name}"])
    md.signed.version += 1
    for key, value in fields.items():
        setattr(md.signed, key, value)
    root = m.repo.root_md().signed
    md.signatures.clear()
    md.sign(keys.load(m.storage, root.get_key(root.roles[key_role].keyids[0])))
    m.storage.files[f"metadata/{name}"] = md.to_bytes(JSONSerializer())


Seen = Callable[[], None]  # makes the client trust the repository's state as it is now
Attack = Callable[[MemoryRepo, Seen], None]


def unsigned(m: MemoryRepo, seen: Seen) -> None:
    doc = json.loads(m.storage.files["metadata/timestamp.json"])
    doc["signatures"] = []
    m.storage.files["metadata/timestamp.json"] = json.dumps(doc).encode()


def wrongly_signed(m: MemoryRepo, seen: Seen) -> None:
    resign(m, "timestamp.json", key_role="targets")


def expired(role: str) -> Attack:
    def attack(m: MemoryRepo, seen: Seen) -> None:
        m.reopen(PAST).renew(role, Expiry(days=1))
        for later in ("snapshot", "timestamp")[("targets", "snapshot", "timestamp").index(role) :]:
            if later != role:
                m.reopen().renew(later, Expiry())  # the pinning roles themselves are fresh

    return attack


def timestamp_rollback(m: MemoryRepo, seen: Seen) -> None:
    old = m.storage.files["metadata/timestamp.json"]
    m.repo.renew("timestamp", Expiry())
    seen()
    m.storage.files["metadata/timestamp.json"] = old


def snapshot_rollback(m: MemoryRepo, seen: Seen) -> None:
    m.repo.renew("snapshot", Expiry())
    seen()
    first = m.storage.files["metadata/3.snapshot.json"]
    resign(m, "timestamp.json", "timestamp", snapshot_meta=MetaFile(3, len(first)))


def targets_rollback(m: MemoryRepo, seen: Seen) -> None:
    m.repo.renew("targets", Expiry())  # targets, snapshot and timestamp v4
    seen()
    resign(m, "4.snapshot.json", "snapshot", meta={"targets.json": MetaFile(3)})
    m.storage.files["metadata/5.snapshot.json"] = m.storage.files.pop("metadata/4.snapshot.json")
    resign(m, "timestamp.json", "timestamp", snapshot_meta=MetaFile(5))


def root_rollback(m: MemoryRepo, seen: Seen) -> None:
    m.repo.renew("root", Expiry())
    seen()
    m.storage.files["metadata/3.root.json"] = m.storage.files["metadata/1.root.json"]


def mix_and_match(m: MemoryRepo, seen: Seen) -> None:
    """timestamp v4 pins snapshot v4 by hash; the server hands out snapshot v3's content,
    correctly signed, under v4's name."""
    m.repo.renew("snapshot", Expiry())
    m.storage.files["metadata/4.snapshot.json"] = m.storage.files["metadata/3.snapshot.json"]


def malformed(m: MemoryRepo, seen: Seen) -> None:
    m.storage.files["metadata/timestamp.json"] = b'{"signed": '


ATTACKS: list[tuple[str, Attack, str]] = [
    ("unsigned timestamp", unsigned, "not signed by enough trusted keys"),
    ("timestamp signed by the targets key", wrongly_signed, "not signed by enough trusted keys"),
    ("expired timestamp", expired("timestamp"), "expired: timestamp.json is expired"),
    ("expired snapshot", expired("snapshot"), "expired: snapshot.json is expired"),
    ("expired targets", expired("targets"), "expired: New targets is expired"),
    ("timestamp rollback", timestamp_rollback, "rollback .*timestamp version 3 must be >= 4"),
    ("snapshot rollback", snapshot_rollback, "rollback .*snapshot version must be >= 4"),
    ("targets rollback", targets_rollback, "rollback .*Expected targets.json version 3, got 4"),
    ("root rollback", root_rollback, "rollback .*Expected root version 3 instead got version 1"),
    ("mix-and-match snapshot", mix_and_match, "does not match its signed length or hash"),
    ("malformed metadata", malformed, "bad repository metadata"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "attack", "message"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_metadata_attacks_are_refused_in_one_line(
    repo: MemoryRepo, tmp_path: Path, name: str, attack: Attack, message: str
) -> None:
    def seen() -> None:
        client(repo, tmp_path).refresh()

    seen()  # a client that trusts what it saw before the attack (rollbacks need one)
    attack(repo, seen)
    with pytest.raises(VerificationError, match=message) as info:
        client(repo, tmp_path).refresh()
    assert "\n" not in info.value.message
    assert info.value.message.startswith("refreshing metadata from mem://repo/metadata/: ")


# ----------------------------------------------------------------------------- target attacks


def corrupted(
    m: MemoryRepo, tmp_path: Path, path: str, change: Callable[[bytes], bytes]
) -> tuple[ReleaseClient, TargetFile]:
    """A client and the signed target of ``path``, whose stored bytes went through ``change``."""
    target = m.repo.targets_md().signed.targets[path]
    folder, _, name = path.rpartition("/")
    stored = f"targets/{folder}/{target.hashes['sha256']}.{name}"
    m.storage.files[stored] = change(m.storage.files[stored])
    c = client(m, tmp_path)
    signed = c.target(path)
    assert signed is not None
    return c, signed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d + b"X" * 5000, "longer than its signed length"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "not match its signed length or hash"),
    ],
    ids=["longer", "truncated", "flipped byte"],
)  # fmt: skip
def test_bad_target_bytes_are_refused(
    repo: MemoryRepo, tmp_path: Path, change: Callable[[bytes], bytes], message: str
) -> None:
    c, kernel = corrupted(repo, tmp_path, "stable/x86_64/2/vmlinuz", change)
    dest = tmp_path / "vmlinuz"
    with pytest.raises(VerificationError, match=message):
        c.download(kernel, dest)
    assert not dest.exists() and list(tmp_path.glob(".vmlinuz*")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda d: d + b"X", "longer than its signed length"), (lambda d: d[:-7], "truncated")],
)
def test_usr_source_refuses_wrong_lengths(
    repo: MemoryRepo, tmp_path: Path, change: Callable[[bytes], bytes], message: str
) -> None:
    c, usr = corrupted(repo, tmp_path, "stable/x86_64/2/usr.img.zst", change)
    with pytest.raises(VerificationError, match=message):
        b"".join(c.source(usr).open(10))


def test_missing_metadata_is_a_transport_error(repo: MemoryRepo, tmp_path: Path) -> None:
    del repo.storage.files["metadata/timestamp.json"]
    with pytest.raises(TransportError, match="HTTP 404 Not Found: mem://repo/metadata/timestamp"):
        client(repo, tmp_path).refresh()


def test_a_bad_trusted_root_is_refused(repo: MemoryRepo, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="loading the trusted root: "):
        repo.client(tmp_path / "cache", trusted_root=b'{"signed": {}, "signatures": []}')


def test_a_release_with_bad_custom_metadata_poisons_the_listing(
    repo: MemoryRepo, tmp_path: Path
) -> None:
    """Signed is not sane: a release whose signed facts contradict the format is refused."""

    def break_size(targets: Any) -> None:
        targets.targets["stable/x86_64/2/usr.img.zst"].custom["updater"]["size"] += 2 << 20

    repo.repo.change_targets(break_size, Expiry())
    with pytest.raises(VerificationError, match="frames: 1 frames for 2129920 bytes"):
        client(repo, tmp_path).releases("stable", "x86_64")

"""The release client over real HTTP on 127.0.0.1: a repository made with ``updater.repo``,
served by a small static server with byte ranges, behind a fault-injecting proxy.

Every fault of the issue's list ends as exit status 1 and exactly one line on stderr from
``updater releases`` (metadata, index, transport faults), or as one typed error from the
byte source of the USR image (its length bounds, Range resume).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer

from tests.integration.conftest import ROOT
from tests.integration.httprepo import Fault, FaultProxy, RepoServer, closed_port
from tests.unit.memrepo import MiB, make_image
from updater.errors import ReleaseError, TransportError, VerificationError
from updater.fetch.client import ReleaseClient, offered, open_client
from updater.fetch.http import HttpPolicy
from updater.release import choose, parse_version
from updater.repo import keys, publish
from updater.repo.repository import Expiry, Repository, create
from updater.repo.storage import DirStorage

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
USR = "stable/x86_64/2/usr.img.zst"


def publish_release(root: Path, version: str, fs_size: int, **kw: Any) -> None:
    img = make_image(int(version.split(".")[0]), fs_size=fs_size)
    publish.add_release(
        Repository(DirStorage(root)), channel=kw.get("channel", "stable"),
        arch=kw.get("arch", "x86_64"), version=parse_version(version), usr=[img.data],
        facts=img.facts, kernel=img.kernel, initrd=b"initrd", frame_size=MiB, level=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("published")
    create(DirStorage(root), Expiry())
    publish_release(root, "1", 40000)
    publish_release(root, "2", 3 * MiB + 5000)  # four frames of 1 MiB
    return root


@dataclass
class Site:
    root: Path  # this test's own copy of the repository
    server: RepoServer
    proxy: FaultProxy
    tmp: Path

    def repo(self, now: datetime | None = None) -> Repository:
        return Repository(DirStorage(self.root), now)

    def client(self, url: str | None = None) -> ReleaseClient:
        policy = HttpPolicy(timeout=1, retries=2, backoff=0.05)
        return open_client(url or self.proxy.url, str(self.trusted_root), str(self.state), policy)

    @property
    def trusted_root(self) -> Path:
        return self.root / "metadata" / "1.root.json"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def releases(self, url: str | None = None) -> subprocess.CompletedProcess[str]:
        """``updater releases`` as an operator runs it, timeout 1 s and one retry."""
        config = self.tmp / "updater.toml"
        config.write_text("[update]\ntimeout = 1\nretries = 1\n")
        exe = ROOT / ".venv" / "bin" / "updater"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
        return subprocess.run(
            [*argv, "--config", str(config), "releases", "--repo", url or self.proxy.url,
             "--trusted-root", str(self.trusted_root), "--state-dir", str(self.state), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def stored(self, path: str) -> Path:
        """The file of a published target."""
        target = self.repo().targets_md().signed.targets[path]
        folder, _, name = path.rpartition("/")
        return self.root / "targets" / folder / f"{target.hashes['sha256']}.{name}"

    def forge(self, name: str, key_role: str, **fields: Any) -> bytes:
        """metadata/NAME as its next version with ``fields`` changed, signed with the key of
        ``key_role`` (the repository's own keys: what an attacker holding one key could do)."""
        md: Metadata[Any] = Metadata.from_bytes((self.root / "metadata" / name).read_bytes())
        md.signed.version += 1
        for key, value in fields.items():
            setattr(md.signed, key, value)
        root = self.repo().root_md().signed
        md.signatures.clear()
        md.sign(keys.load(DirStorage(self.root), root.get_key(root.roles[key_role].keyids[0])))
        return md.to_bytes(JSONSerializer())


@pytest.fixture
def site(published: Path, tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "repo"
    shutil.copytree(published, root)
    with RepoServer(root) as server, FaultProxy(server.url) as proxy:
        yield Site(root, server, proxy, tmp_path)


def one_line_error(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "retrying in" not in line]
    assert len(lines) == 1 and lines[0].startswith("updater: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------- happy path


def test_releases_over_http(site: Site) -> None:
    proc = site.releases(site.server.url)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["version"] for r in doc["releases"]] == ["2", "1"]
    two = doc["releases"][0]
    assert two["usr"]["length"] == site.stored(USR).stat().st_size
    assert two["frames"] == 4 and two["frame_size"] == MiB
    paths = [p for p, _ in site.server.log]
    assert paths[:2] == ["/metadata/2.root.json", "/metadata/timestamp.json"]
    assert "/metadata/3.snapshot.json" in paths and "/metadata/3.targets.json" in paths


def test_streams_from_an_offset_with_range(site: Site) -> None:
    client = site.client(site.server.url)
    usr = client.target(USR)
    assert usr is not None
    data = site.stored(USR).read_bytes()
    source = client.source(usr)
    for start in (0, 12345, len(data) - 1, len(data)):
        assert b"".join(source.open(start)) == data[start:]
    assert any(r == "bytes=12345-" for p, r in site.server.log if p.endswith(".usr.img.zst"))


def test_resumes_after_a_connection_cut_mid_body(site: Site) -> None:
    site.proxy.faults = [Fault(".usr.img.zst", "cut", times=1, after=1_500_000)]
    client = site.client()
    usr = client.target(USR)
    assert usr is not None
    assert b"".join(client.source(usr).open(0)) == site.stored(USR).read_bytes()
    ranges = [r for p, r in site.proxy.log if p.endswith(".usr.img.zst")]
    assert ranges[0] is None and len(ranges) == 2
    # resumed where the delivered bytes end (at a read boundary: a partial read is dropped)
    m = re.fullmatch(r"bytes=(\d+)-", ranges[1] or "")
    assert m is not None and 0 < int(m.group(1)) <= 1_500_000


def test_a_server_that_ignores_range_gives_the_right_bytes(site: Site) -> None:
    with RepoServer(site.root, ignore_range=True) as plain:
        client = site.client(plain.url)
        usr = client.target(USR)
        assert usr is not None
        data = site.stored(USR).read_bytes()
        assert b"".join(client.source(usr).open(1_000_001)) == data[1_000_001:]


def test_a_transient_failure_is_retried(site: Site) -> None:
    site.proxy.faults = [Fault("timestamp.json", "status", times=1, code=503)]
    proc = site.releases()
    assert proc.returncode == 0, proc.stderr
    assert (
        "HTTP 503 Service Unavailable" in proc.stderr and "retrying in 1 s (1 of 1)" in proc.stderr
    )
    assert [p for p, _ in site.proxy.log].count("/metadata/timestamp.json") == 2


# ------------------------------------------------------------------------------------- faults


def _strip_signatures(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["signatures"] = []
    return json.dumps(doc).encode()


def _flip(body: bytes) -> bytes:
    return body[:10] + bytes([body[10] ^ 0x20]) + body[11:]


Setup = Callable[[Site], None]


def faults(*rules: Fault) -> Setup:
    def setup(site: Site) -> None:
        site.proxy.faults = list(rules)

    return setup


def replace(match: str, make: Callable[[Site], bytes]) -> Setup:
    """The proxy serves ``make(site)`` (computed now) for paths containing ``match``."""

    def setup(site: Site) -> None:
        body = make(site)
        site.proxy.faults.append(Fault(match, "body", change=lambda _: body, status=200))

    return setup


def seen_then(*steps: Setup) -> Setup:
    """The client first trusts the repository as it is; then the steps."""

    def setup(site: Site) -> None:
        assert site.releases().returncode == 0
        for step in steps:
            step(site)

    return setup


def expired(role: str) -> Setup:
    def setup(site: Site) -> None:
        site.repo(PAST).renew(role, Expiry(days=1))
        for later in ("targets", "snapshot", "timestamp"):
            if ("targets", "snapshot", "timestamp").index(later) > (
                "targets",
                "snapshot",
                "timestamp",
            ).index(role):
                site.repo().renew(later, Expiry())  # fmt: skip

    return setup


def renew(role: str) -> Setup:
    def setup(site: Site) -> None:
        site.repo().renew(role, Expiry())

    return setup


def timestamp_rollback(site: Site) -> None:
    """The client trusts timestamp v4; the server hands out v3 again."""
    old = (site.root / "metadata" / "timestamp.json").read_bytes()
    site.repo().renew("timestamp", Expiry())
    seen_then(faults(Fault("timestamp.json", "body", change=lambda _: old)))(site)


def _metadata(name: str) -> Callable[[Site], bytes]:
    return lambda site: (site.root / "metadata" / name).read_bytes()


FAULTS: list[tuple[str, Setup, str]] = [
    ("HTTP 404", faults(Fault("timestamp.json", "status", code=404)),
     r"HTTP 404 Not Found: http://127\.0\.0\.1:\d+/metadata/timestamp\.json$"),
    ("HTTP 500", faults(Fault("timestamp.json", "status", code=500)),
     r"HTTP 500 Internal Server Error from http://\S+/timestamp\.json \(gave up after 1 retries\)"),
    ("reset connection", faults(Fault("timestamp.json", "reset")),
     r"cannot fetch http://\S+/timestamp\.json: connection reset by peer \(gave up"),
    ("stalled server", faults(Fault("timestamp.json", "stall")),
     r"cannot fetch http://\S+/timestamp\.json: no data for 1 s \(gave up after 1 retries\)"),
    ("unsigned metadata", faults(Fault("timestamp.json", "body", change=_strip_signatures)),
     "metadata not signed by enough trusted keys: timestamp was signed by 0/1 keys"),
    ("wrongly signed metadata",
     replace("timestamp.json", lambda s: s.forge("timestamp.json", "snapshot")),
     "metadata not signed by enough trusted keys: timestamp was signed by 0/1 keys"),
    ("expired timestamp", expired("timestamp"), "expired: timestamp.json is expired"),
    ("expired snapshot", expired("snapshot"), "expired: snapshot.json is expired"),
    ("expired targets", expired("targets"), "expired: New targets is expired"),
    ("rollback of the timestamp", timestamp_rollback,
     "rollback .*New timestamp version 3 must be >= 4"),
    ("rollback of the snapshot",
     seen_then(replace("timestamp.json", lambda s: s.forge(
         "timestamp.json", "timestamp", snapshot_meta=MetaFile(2)))),
     "rollback .*New snapshot version must be >= 3, got version 2"),
    ("rollback of the targets",
     seen_then(replace("4.snapshot.json", lambda s: s.forge(
                   "3.snapshot.json", "snapshot", meta={"targets.json": MetaFile(2)})),
               replace("timestamp.json", lambda s: s.forge(
                   "timestamp.json", "timestamp", snapshot_meta=MetaFile(4)))),
     "rollback .*Expected targets.json version 2, got 3"),
    ("rollback of the root", replace("/2.root.json", _metadata("1.root.json")),
     "rollback .*Expected root version 2 instead got version 1"),
    ("mix-and-match snapshot",
     seen_then(renew("snapshot"), replace("/4.snapshot.json", _metadata("3.snapshot.json"))),
     "does not match its signed length or hash"),
    ("index longer than signed", faults(Fault("index.json", "body", change=lambda b: b + b" ")),
     r"index\.json is longer than its signed length \d+ \(the source has \d+ bytes\)"),
    ("index endless", faults(Fault("index.json", "endless")),
     r"index\.json is longer than its signed length"),
    ("index truncated", faults(Fault("index.json", "body", change=lambda b: b[:-3])),
     r"index\.json is truncated: the source has \d+ bytes, the signed length is \d+"),
    ("index with a flipped byte", faults(Fault("index.json", "body", change=_flip)),
     r"fetching stable/x86_64/index\.json: a file does not match its signed length or hash"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "setup", "pattern"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_one_clear_line(site: Site, name: str, setup: Setup, pattern: str) -> None:
    setup(site)
    one_line_error(site.releases(), pattern)


def test_connection_refused(site: Site) -> None:
    one_line_error(
        site.releases(f"http://127.0.0.1:{closed_port()}"),
        r"cannot fetch http://127\.0\.0\.1:\d+/metadata/2\.root\.json: connection refused",
    )


# ---------------------------------------------------------------------- the USR byte source


@pytest.mark.parametrize(
    ("fault", "error", "pattern"),
    [
        (Fault(".usr.img.zst", "body", change=lambda b: b + b"x"), VerificationError,
         r"longer than its signed length \d+ \(the source has \d+ bytes\)"),
        (Fault(".usr.img.zst", "body", change=lambda b: b + b"x", length=lambda b: None),
         VerificationError, "longer than its signed length"),
        (Fault(".usr.img.zst", "endless"), VerificationError, "longer than its signed length"),
        (Fault(".usr.img.zst", "body", change=lambda b: b[:-1]), VerificationError, "truncated"),
        (Fault(".usr.img.zst", "status", code=404), TransportError, "HTTP 404"),
        (Fault(".usr.img.zst", "reset", after=70000), TransportError,
         r"connection reset by peer \(gave up after 2 retries\)"),
    ],
    ids=["longer", "longer without length", "endless", "truncated", "404", "always reset"],
)  # fmt: skip
def test_usr_source_faults(site: Site, fault: Fault, error: type[Exception], pattern: str) -> None:
    client = site.client()
    usr = client.target(USR)
    assert usr is not None
    site.proxy.faults = [fault]
    with pytest.raises(error, match=pattern):
        b"".join(client.source(usr).open(0))


def test_a_flipped_byte_is_caught_at_its_frame(site: Site) -> None:
    """The source only moves bytes; the signed frame table names the frame that went bad
    (what the slot writer checks)."""
    client = site.client()
    found = client.releases("stable", "x86_64")
    assert found is not None
    table = found[-1].image.frames
    flip_at = table.compressed_offset(2) + 17
    site.proxy.faults = [Fault(".usr.img.zst", "body", change=lambda b: b[:flip_at] + bytes(
        [b[flip_at] ^ 1]) + b[flip_at + 1 :])]  # fmt: skip
    usr = client.target(USR)
    assert usr is not None
    data = b"".join(client.source(usr).open(0))
    bad = [
        i for i, frame in enumerate(table.frames)
        if hashlib.sha256(data[table.compressed_offset(i) : table.compressed_offset(i + 1)])
        .hexdigest() != frame.sha256
    ]  # fmt: skip
    assert bad == [2]


def test_wrong_architecture_and_downgrade_are_refused(site: Site) -> None:
    publish_release(site.root, "5", 40000, channel="beta", arch="arm64")
    client = site.client()
    v = parse_version
    with pytest.raises(ReleaseError, match="the channel has releases only for arm64"):
        choose(offered(client.releases, "beta", "x86_64", None), arch="x86_64", booted=v("1"))
    with pytest.raises(ReleaseError, match="release 1 is older than the booted 2"):
        choose(offered(client.releases, "stable", "x86_64", v("1")), arch="x86_64",
               booted=v("2"), pin=v("1"))  # fmt: skip

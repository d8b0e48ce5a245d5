"""A signed release repository served over real HTTP on 127.0.0.1 behind a fault-injecting
proxy (``Site``), and the faults every client-side command must turn into one clear line
(``FAULTS``). Shared by the fetch tests and the update tests; the fixtures ``published`` and
``site`` are registered in this tier's conftest."""

from __future__ import annotations

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
from tests.integration.httprepo import Fault, FaultProxy, RepoServer
from tests.unit.memrepo import MiB, make_image
from updater.fetch.client import ReleaseClient, open_client
from updater.fetch.http import HttpPolicy
from updater.release import parse_version
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
    """Exit 1 and exactly one line on stderr (a retry notice aside) naming the problem."""
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "retrying in" not in line]
    assert len(lines) == 1 and lines[0].startswith("updater: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]

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


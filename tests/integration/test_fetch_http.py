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

import pytest

from tests.integration.httprepo import Fault, RepoServer, closed_port
from tests.integration.repos import FAULTS, USR, Setup, Site, one_line_error, publish_release
from tests.unit.memrepo import MiB
from updater.errors import ReleaseError, TransportError, VerificationError
from updater.fetch.client import offered
from updater.release import choose, parse_version

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

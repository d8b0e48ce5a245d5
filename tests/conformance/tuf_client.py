"""The client-under-test of the TUF conformance suite (``tuf-conformance``'s CLIENT-CLI.md).

``init`` puts the trusted root into the metadata directory; ``refresh`` and ``download`` run
``updater.fetch.client.ReleaseClient`` (python-tuf's ngclient over the project's HTTP fetcher,
with its bounds, retries and error translation) exactly as ``updater releases`` does, only
with the suite's URLs and directories. Exit 0 on full success, 1 otherwise, with the error on
stderr as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from updater.errors import UpdaterError
from updater.fetch.client import Endpoint, ReleaseClient
from updater.fetch.http import HttpFetcher, HttpPolicy

# The suite's server answers one request at a time between polls; nothing in it is transient,
# so one quick retry is plenty and keeps a failing test fast.
POLICY = HttpPolicy(timeout=10, retries=1, backoff=0.1)


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def init(metadata_dir: Path, trusted_root: str) -> None:
    """Copy the trust anchor in, atomically (no checks are expected, none are done here:
    python-tuf verifies it when it is first used)."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    data = Path(trusted_root).read_bytes()
    fd, tmp = tempfile.mkstemp(dir=metadata_dir, prefix=".root.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, metadata_dir / "root.json")


def client(args: argparse.Namespace) -> ReleaseClient:
    if not args.metadata_url:
        raise UpdaterError("--metadata-url is required")
    where = Endpoint(
        _slash(args.metadata_url), _slash(args.target_base_url or ""), HttpFetcher(POLICY)
    )
    return ReleaseClient(where, args.metadata_dir, trusted_root=None)


def download(args: argparse.Namespace) -> None:
    if not args.target_name or not args.target_dir or not args.target_base_url:
        raise UpdaterError("download needs --target-name, --target-dir and --target-base-url")
    tuf = client(args)
    tuf.refresh()
    for name in args.target_name:  # in order, one client; the first failure stops
        target = tuf.target(name)
        if target is None:
            raise UpdaterError(f"no signed target {name!r}")
        tuf.download(target, Path(args.target_dir) / quote(name, ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuf-conformance-client")
    parser.add_argument("--metadata-dir", type=Path, required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append")
    parser.add_argument("--target-base-url")
    parser.add_argument("--target-dir")
    parser.add_argument("command", choices=("init", "refresh", "download"))
    parser.add_argument("trusted_root", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            if not args.trusted_root:
                raise UpdaterError("init needs the trusted root file")
            init(args.metadata_dir, args.trusted_root)
        elif args.command == "refresh":
            client(args).refresh()
        else:
            download(args)
    except (UpdaterError, OSError) as exc:
        sys.stderr.write(f"tuf-conformance-client: {getattr(exc, 'message', exc)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

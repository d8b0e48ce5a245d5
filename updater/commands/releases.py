"""``updater releases``: what the repository offers this machine, read-only.

Refreshes the signed metadata (as ``update`` will), reads the channel index and each release's
signed targets, and prints them newest first. It writes nothing but python-tuf's metadata
cache in the state directory, and never touches a disk or a slot.
"""

from __future__ import annotations

import argparse
import sys

from updater import config, jsonout
from updater.commands.common import add_repository_options

DESCRIPTION = f"""\
List the releases the repository offers for a channel and architecture, after verifying the
signed metadata against the trusted root (TUF: signatures, expiry, rollback, mix-and-match).
Defaults come from the [update] section of {config.CONFIG_PATH}; the architecture from
[boot] arch.
"""

EPILOG = """\
--json prints {"repo": URL|DIR, "channel": C, "arch": A, "releases": [...]} with each release
as documented in the README (newest first). Exit status 0 (also when the channel lists nothing
for this architecture), 1 when the repository cannot be reached or fails verification.
"""


def cmd_releases(args: argparse.Namespace) -> int:
    from updater.fetch.client import open_client
    from updater.fetch.http import HttpPolicy

    cfg = config.load(args.config)
    settings = config.with_overrides(
        cfg, "update",
        repo=args.repo, trusted_root=args.trusted_root, state_dir=args.state_dir,
        channel=args.channel,
    ).update  # fmt: skip
    arch = args.arch or cfg.boot.arch
    policy = HttpPolicy(timeout=settings.timeout, retries=settings.retries)
    client = open_client(settings.repo, settings.trusted_root, settings.state_dir, policy)
    client.refresh()
    found = client.releases(settings.channel, arch) or []
    found.sort(key=lambda r: r.version, reverse=True)
    if args.json:
        doc = {
            "repo": settings.repo,
            "channel": settings.channel,
            "arch": arch,
            "releases": [r.to_json() for r in found],
        }
        sys.stdout.write(jsonout.dumps(doc))
        return 0
    if not found:
        sys.stdout.write(f"no releases for {settings.channel}/{arch} in {settings.repo}\n")
        return 0
    sys.stdout.write(f"{'VERSION':<16}{'SIZE':>12}{'DOWNLOAD':>12}  FS        ROOT HASH\n")
    for r in found:
        img = r.image
        sys.stdout.write(
            f"{str(r.version):<16}{img.size:>12}{img.usr.length:>12}  {img.fs_type:<10}"
            f"{img.verity.root_hash[:16]}\n"
        )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "releases",
        help="list the releases the repository offers this machine (read-only)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository_options(p, "where verified metadata is cached")
    p.add_argument("--arch", choices=config.ARCHES, help="architecture ([boot] arch)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (README)")
    p.set_defaults(func=cmd_releases)

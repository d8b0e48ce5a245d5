"""``updater repo init|add|expire|resign|rotate|show``: publishing signed releases.

The command turns arguments into calls of ``updater.repo`` and results into output; python-tuf
and the compression library are imported only when a repo command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from updater import config, jsonout
from updater.errors import UsageError
from updater.release import Version, parse_version

if TYPE_CHECKING:
    from updater.repo.repository import Expiry, Repository
    from updater.repo.storage import DirStorage

ROLE_NAMES = ("root", "targets", "snapshot", "timestamp")
READ_SIZE = 4 << 20

DESCRIPTION = """\
A TUF repository of releases (python-tuf metadata, one ed25519 key per role, consistent
snapshots). DIR/metadata/ and DIR/targets/ are served as they are by any static web server,
CDN or object store; the private keys stay in DIR/keys/ (mode 0600), which must never be
served. Ship DIR/metadata/root.json in the OS image as /usr/share/updater/root.json.
Expiry defaults: root 365 days, targets 90, snapshot 30, timestamp 7 (re-sign the timestamp
daily in production: updater repo expire DIR); --expires-days N sets every role a command
writes.
"""

ADD_DESCRIPTION = """\
Publish release VERSION: the USR image (a squashfs or erofs with its dm-verity tree at the
filesystem size rounded up to 4096, as the image builder makes it) compressed into independent
zstd frames, the kernel (with the verity root hash at byte 0x40 on x86_64, 512 on arm64) and
an optional initrd, as targets CHANNEL/ARCH/VERSION/{usr.img.zst,vmlinuz,initrd} with signed
custom metadata, and the channel index CHANNEL/ARCH/index.json. The image's hash tree is
verified against the kernel's root hash first. All of it appears to clients at once.
"""


def _version(text: str) -> Version:
    try:
        return parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to 3650")
    return int(text)


def _frame_mib(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB from 1 to 1024")
    return int(text)


def _open(args: argparse.Namespace) -> tuple[DirStorage, Repository]:
    from updater.repo.repository import Repository
    from updater.repo.storage import DirStorage

    storage = DirStorage(args.dir)
    return storage, Repository(storage)


def _expiry(args: argparse.Namespace, keep: bool = False) -> Expiry:
    from updater.repo.repository import Expiry

    return Expiry(days=getattr(args, "expires_days", None), keep=keep)


def roles(repo: Repository) -> dict[str, Any]:
    """Each role's version, expiry and key ids (the ``roles`` of ``repo --json``)."""
    out = {}
    for role in ROLE_NAMES:
        md = repo.load(role)
        out[role] = {
            "version": md.signed.version,
            "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "keyids": list(repo.root_md().signed.roles[role].keyids),
        }
    return out


def _print(
    args: argparse.Namespace, repo: Repository, extra: dict[str, Any], lines: tuple[str, ...] = ()
) -> int:
    """The result: ``{"dir", "roles", **extra}`` as JSON, or ``lines`` and a table of roles."""
    doc = {"dir": args.dir, "roles": roles(repo), **extra}
    if args.json:
        sys.stdout.write(jsonout.dumps(doc))
        return 0
    out = list(lines)
    for role, facts in doc["roles"].items():
        keys = " ".join(k[:16] for k in facts["keyids"])
        out.append(f"{role:<10} v{facts['version']:<5} expires {facts['expires']}  key {keys}")
    sys.stdout.write("".join(line + "\n" for line in out))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from updater.repo.repository import create
    from updater.repo.storage import DirStorage

    storage = DirStorage(args.dir)
    with storage.locked():
        repo = create(storage, _expiry(args))
        line = (
            f"created {args.dir}: serve {args.dir}/metadata and {args.dir}/targets; "
            f"ship {args.dir}/metadata/root.json as the trusted root"
        )
        return _print(args, repo, {}, (line,))


def _read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            yield chunk


def _small_file(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{path}: larger than {limit} bytes")
    return data


def cmd_add(args: argparse.Namespace) -> int:
    from updater import frames, release
    from updater.repo import image, publish

    storage, repo = _open(args)
    kernel = _small_file(args.kernel, release.MAX_KERNEL_SIZE)
    initrd = _small_file(args.initrd, release.MAX_INITRD_SIZE) if args.initrd else None
    facts = image.inspect(args.usr, kernel, args.arch)
    with storage.locked():
        published = publish.add_release(
            repo,
            channel=args.channel,
            arch=args.arch,
            version=args.version,
            usr=_read_chunks(args.usr),
            facts=facts,
            kernel=kernel,
            initrd=initrd,
            frame_size=args.frame_size * frames.MiB,
            expiry=_expiry(args),
            waves=_waves(args.wave),
        )
    doc = published.to_json()
    line = (
        f"published {doc['channel']}/{doc['arch']} {doc['version']}: {doc['size']} bytes "
        f"({doc['fs_type']}) in {doc['frames']} frames, {doc['usr']['length']} compressed"
    )
    return _print(args, repo, {"release": doc}, (line,))


def _wave(text: str) -> tuple[int, str]:
    """``BOUND@TIME``: machines whose seed is below BOUND (1..2048) from TIME (RFC 3339)."""
    from updater.agent.schedule import parse_rfc3339

    bound, sep, when = text.partition("@")
    try:
        if not sep or not 1 <= int(bound) <= 2048:
            raise ValueError(f"{text!r} is not BOUND@TIME with BOUND 1..2048")
        parse_rfc3339(when)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return int(bound), when


def _waves(given: list[tuple[int, str]] | None) -> tuple[tuple[int, str], ...]:
    """The waves in bound order; the agent refuses a plan whose starts go back in time."""
    from updater.agent.schedule import parse_waves
    from updater.errors import DataError

    waves = tuple(sorted(given or ()))
    try:
        parse_waves([list(w) for w in waves])
    except DataError as exc:
        raise UsageError(f"--wave: {exc.message}") from None
    return waves


def _roles(args: argparse.Namespace) -> tuple[str, ...]:
    return ROLE_NAMES if args.role == "all" else (args.role,)


def cmd_expire(args: argparse.Namespace) -> int:
    storage, repo = _open(args)
    with storage.locked():
        for role in _roles(args):
            repo.renew(role, _expiry(args))
    return _print(args, repo, {})


def cmd_resign(args: argparse.Namespace) -> int:
    storage, repo = _open(args)
    with storage.locked():
        for role in _roles(args):
            repo.renew(role, _expiry(args, keep=True))
    return _print(args, repo, {})


def cmd_rotate(args: argparse.Namespace) -> int:
    storage, repo = _open(args)
    with storage.locked():
        keyid = repo.rotate(args.role, _expiry(args, keep=True))
    line = f"{args.role}: new key {keyid[:16]}; the old one is in {args.dir}/keys/retired/"
    return _print(args, repo, {"new_keyid": keyid}, (line,))


def cmd_show(args: argparse.Namespace) -> int:
    _, repo = _open(args)
    return _print(args, repo, {})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "repo",
        help="publish signed releases: a TUF repository",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="repo_command", metavar="ACTION")
    actions.required = True

    def action(name: str, help_text: str, func: Any, **kw: Any) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text, **kw)
        a.add_argument("dir", metavar="DIR", help="the repository directory")
        a.add_argument("--json", action="store_true", help="print the result as JSON (README)")
        a.set_defaults(func=func)
        return a

    def expires(a: argparse.ArgumentParser) -> None:
        a.add_argument(
            "--expires-days", type=_days, metavar="N", help="expiry of roles written, in days"
        )

    expires(
        action("init", "create a repository: keys, root, targets, snapshot, timestamp", cmd_init)
    )
    add = action(
        "add", "publish a release", cmd_add,
        description=ADD_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add.add_argument("--version", required=True, type=_version, metavar="V",
                     help="release version: 1 to 4 dotted numbers, e.g. 3815.2.0")  # fmt: skip
    add.add_argument("--usr", required=True, metavar="IMAGE", help="USR image with verity tree")
    add.add_argument("--kernel", required=True, metavar="VMLINUZ", help="kernel with root hash")
    add.add_argument("--initrd", metavar="FILE", help="initrd (optional)")
    add.add_argument(
        "--channel",
        type=config.option("update", "channel"),
        default="stable",
        metavar="C",
        help="release channel (default: stable)",
    )
    add.add_argument("--arch", choices=config.ARCHES, default=config.native_arch(),
                     help="default: this machine's")  # fmt: skip
    add.add_argument("--wave", type=_wave, action="append", metavar="BOUND@TIME",
                     help="rollout wave: machines with a seed below BOUND (1..2048) take the "
                     "release from TIME (RFC 3339, e.g. 2030-01-01T02:00:00Z); repeatable; "
                     "none: every machine at once")  # fmt: skip
    add.add_argument("--frame-size", type=_frame_mib, default=32, metavar="MIB",
                     help="uncompressed bytes per zstd frame, in MiB (default 32)")  # fmt: skip
    expires(add)
    for name, help_text, func, default in (
        ("expire", "renew expiry: new versions signed now (default role: timestamp)",
         cmd_expire, "timestamp"),
        ("resign", "new versions signed with the current keys, expiry kept (default: all)",
         cmd_resign, "all"),
    ):  # fmt: skip
        a = action(name, help_text, func)
        a.add_argument("--role", choices=(*ROLE_NAMES, "all"), default=default)
        if name == "expire":
            expires(a)
    rotate = action(
        "rotate", "replace a role's key (root: signed by the old and new key)", cmd_rotate
    )
    rotate.add_argument("role", choices=ROLE_NAMES, metavar="ROLE", help=", ".join(ROLE_NAMES))
    action("show", "each role's version, expiry and key", cmd_show)

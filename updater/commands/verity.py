"""``updater verity format|verify``: dm-verity hash trees that veritysetup accepts as its own.

The command only turns arguments into calls of ``updater.verityfile`` and results into output;
the tree lives in ``updater.verity``.
"""

from __future__ import annotations

import argparse
import sys

from updater.commands import INDEX
from updater.errors import UsageError
from updater.guid import Guid
from updater.jsonout import dumps
from updater.verity import BLOCK_SIZE, DIGEST_SIZE, VerityParams, parse_salt
from updater.verityfile import FormatResult, format_file, verify_file

FORMAT_DESCRIPTION = """\
Compute the dm-verity hash tree of DATA (format 1, sha256, 4096-byte blocks) and write the hash
area: a superblock (unless --no-superblock) followed by the tree, top level first. The result is
byte-identical to `veritysetup format` with the same salt and UUID.

With --hash-offset BYTES (and no --hash-file) the first BYTES of DATA are the data and the hash
area is written into DATA at that offset, like
`veritysetup format DATA DATA --hash-offset BYTES --data-blocks BYTES/4096`.
With --hash-file the whole of DATA is data (a file size must be a multiple of 4096; a block
device's size is used) and the hash area goes to FILE, which is created when missing.
"""

FORMAT_EPILOG = """\
--json prints {"data_blocks": N, "hash_offset": N, "root_hash": HEX, "salt": HEX}
(hash_offset is 0 with --hash-file; salt is "" for an empty salt).
Examples:
  updater verity format usr.img --hash-file usr.hash
  updater verity format usr-partition.img --hash-offset 1073741824 --json
  updater verity format usr.img --hash-file usr.hash --salt - --no-superblock
"""

VERIFY_DESCRIPTION = """\
Check that DATA, its hash area and ROOT_HASH agree: the whole tree is recomputed from the data
and compared block for block with the hash area; the superblock's fields (all but the UUID) must
match, and the root hash must equal ROOT_HASH. Exits 0 when everything matches, 1 with one line
naming the first mismatch (data block, hash level and block, superblock field or root hash).
With a superblock the salt is read from it (--salt, if given, must match); with
--no-superblock, --salt is required. DATA and the hash location work as for `verity format`.
"""

VERIFY_EPILOG = """\
--json prints {"data_blocks": N, "hash_offset": N, "root_hash": HEX, "salt": HEX} on success.
Examples:
  updater verity verify usr.img 4f1c...e2 --hash-file usr.hash
  updater verity verify /dev/disk/by-partlabel/USR-B 4f1c...e2 --hash-offset 1073741824
"""


def _byte_count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if value < 0 or value % BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is not a non-negative multiple of {BLOCK_SIZE}")
    return value


def _root_hash(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != DIGEST_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not {DIGEST_SIZE * 2} hexadecimal digits")
    return value


def _uuid(text: str) -> Guid:
    try:
        return Guid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hash-file", metavar="FILE", help="write/read the hash area in FILE")
    where.add_argument(
        "--hash-offset",
        metavar="BYTES",
        type=_byte_count,
        help="data is the first BYTES of DATA; the hash area follows it in DATA",
    )
    parser.add_argument(
        "--salt", metavar="HEX", help="salt in hex, - for none (format default: 32 random bytes)"
    )
    parser.add_argument(
        "--no-superblock", action="store_true", help="no superblock before the tree"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verity = subparsers.add_parser(
        "verity",
        help=INDEX["verity"].help,
        description="dm-verity hash trees compatible with veritysetup (format 1, sha256).",
    )
    actions = verity.add_subparsers(dest="verity_command", metavar="ACTION")
    actions.required = True

    fmt = actions.add_parser(
        "format",
        help="compute and write a hash tree",
        description=FORMAT_DESCRIPTION,
        epilog=FORMAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fmt.add_argument("data", metavar="DATA", help="data file or block device")
    _add_common(fmt)
    fmt.add_argument("--uuid", type=_uuid, help="superblock UUID (default: random)")
    fmt.set_defaults(func=run_format)

    ver = actions.add_parser(
        "verify",
        help="check data and hash tree against a root hash",
        description=VERIFY_DESCRIPTION,
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ver.add_argument("data", metavar="DATA", help="data file or block device")
    ver.add_argument("root_hash", metavar="ROOT_HASH", type=_root_hash, help="expected root hash")
    _add_common(ver)
    ver.set_defaults(func=run_verify)


def _locations(args: argparse.Namespace) -> tuple[str, int, int | None]:
    """(hash path, hash offset, data blocks or None for "all of DATA")."""
    if args.hash_file is not None:
        return args.hash_file, 0, None
    offset: int = args.hash_offset
    if offset == 0:
        raise UsageError("--hash-offset 0 leaves no room for data")
    return args.data, offset, offset // BLOCK_SIZE


def _salt(args: argparse.Namespace) -> bytes | None:
    return None if args.salt is None else parse_salt(args.salt)


def _summary(params: VerityParams, root_hash: bytes, hash_offset: int) -> dict[str, object]:
    return FormatResult(params, root_hash, hash_offset, None).to_json()


def run_format(args: argparse.Namespace) -> int:
    hash_path, hash_offset, data_blocks = _locations(args)
    if args.uuid is not None and args.no_superblock:
        raise UsageError("--uuid is stored in the superblock, so it needs one")
    result = format_file(
        args.data,
        hash_path,
        hash_offset=hash_offset,
        data_blocks=data_blocks,
        salt=_salt(args),
        superblock=not args.no_superblock,
        volume_uuid=args.uuid,
    )
    if args.json:
        sys.stdout.write(dumps(result.to_json()))
        return 0
    params = result.params
    lines = [
        ("UUID", str(result.superblock.uuid) if result.superblock else ""),
        ("Hash type", "1"),
        ("Data blocks", str(params.data_blocks)),
        ("Data block size", str(BLOCK_SIZE)),
        ("Hash blocks", str(params.tree_blocks)),
        ("Hash block size", str(BLOCK_SIZE)),
        ("Hash algorithm", "sha256"),
        ("Salt", params.salt.hex() or "-"),
        ("Root hash", result.root_hash.hex()),
        ("Hash offset", str(result.hash_offset)),
    ]
    sys.stdout.write("".join(f"{name + ':':<17}{value}\n" for name, value in lines))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    hash_path, hash_offset, data_blocks = _locations(args)
    params = verify_file(
        args.data,
        hash_path,
        args.root_hash,
        hash_offset=hash_offset,
        data_blocks=data_blocks,
        salt=_salt(args),
        superblock=not args.no_superblock,
    )
    if args.json:
        sys.stdout.write(dumps(_summary(params, args.root_hash, hash_offset)))
    else:
        sys.stdout.write(f"Verified {params.data_blocks} data blocks: root hash matches.\n")
    return 0

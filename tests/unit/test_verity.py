"""Pure tests of updater.verity: every expected tree comes from the naive reference below.

The reference follows the format description (REFERENCE.md section 6) as literally as possible,
sharing no code with the module under test. Byte identity with veritysetup itself is checked in
tests/integration/test_verity_veritysetup.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from updater import verityfile
from updater.commands import verity as verity_command
from updater.errors import DeviceError, UsageError, VerificationError
from updater.guid import Guid
from updater.verity import (
    BLOCK_SIZE,
    Superblock,
    VerityParams,
    VerityTree,
    VerityTreeBuilder,
    blocks_for_size,
    check_hash_area,
    digest_blocks,
    hash_area_size,
    parse_salt,
    salted_hash,
)

SALTS = [b"", b"\x01", bytes(range(32)), bytes(range(256))]


def naive_levels(data: bytes, salt: bytes) -> tuple[list[bytes], bytes]:
    """(levels bottom-up, each a list of 4096-byte blocks joined; root hash)."""
    blocks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    levels: list[bytes] = []
    while len(blocks) > 1:
        digests = [hashlib.sha256(salt + block).digest() for block in blocks]
        blocks = []
        for i in range(0, len(digests), 128):
            blocks.append(b"".join(digests[i : i + 128]).ljust(4096, b"\0"))
        levels.append(b"".join(blocks))
    return levels, hashlib.sha256(salt + blocks[0]).digest()


def make_data(blocks: int, seed: int) -> bytes:
    rng = random.Random(seed)
    # Mostly distinct blocks, and a few repeated ones so that equal digests appear too.
    return b"".join(
        rng.randbytes(64) * 64 if i % 7 else b"\0" * 4096 for i in range(blocks)
    )


def tree_of(data: bytes, salt: bytes) -> VerityTree:
    builder = VerityTreeBuilder(VerityParams(len(data) // BLOCK_SIZE, salt))
    builder.update(data)
    return builder.finish()


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 256, 257, 300])
@pytest.mark.parametrize("salt", SALTS, ids=["empty", "short", "32", "256"])
def test_tree_matches_naive_reference(blocks: int, salt: bytes) -> None:
    data = make_data(blocks, seed=blocks)
    levels, root = naive_levels(data, salt)
    tree = tree_of(data, salt)
    assert tree.root_hash == root
    assert list(tree.levels) == levels
    assert tree.tree_bytes() == b"".join(reversed(levels))


def test_three_levels_match_naive_reference() -> None:
    # 128*128 + 1 blocks is the smallest input with three levels; zero data keeps it fast.
    data = bytes(BLOCK_SIZE * (128 * 128 + 1))
    levels, root = naive_levels(data, b"salt")
    tree = tree_of(data, b"salt")
    assert len(tree.levels) == 3
    assert tree.root_hash == root
    assert list(tree.levels) == levels


def test_single_block_root_is_the_block_digest() -> None:
    data = make_data(1, seed=5)
    tree = tree_of(data, b"ab")
    assert tree.levels == ()
    assert tree.root_hash == hashlib.sha256(b"ab" + data).digest()


def test_streaming_in_uneven_chunks_gives_same_tree() -> None:
    data = make_data(300, seed=9)
    builder = VerityTreeBuilder(VerityParams(300, b"s"))
    cuts = [0, 1, 5, 128, 129, 250, 300]
    for start, end in zip(cuts, cuts[1:], strict=False):
        builder.update(data[start * BLOCK_SIZE : end * BLOCK_SIZE])
    assert builder.finish() == tree_of(data, b"s")


def test_builder_counts_blocks() -> None:
    builder = VerityTreeBuilder(VerityParams(2, b""))
    builder.update(bytes(BLOCK_SIZE))
    with pytest.raises(UsageError, match="1 of 2"):
        builder.finish()
    builder.update(bytes(BLOCK_SIZE))
    with pytest.raises(UsageError, match="more than"):
        builder.update(bytes(BLOCK_SIZE))
    with pytest.raises(UsageError, match="whole number"):
        VerityTreeBuilder(VerityParams(2, b"")).update(bytes(100))


def naive_level_sizes(blocks: int) -> list[int]:
    sizes = []
    while blocks > 1:
        blocks = (blocks + 127) // 128
        sizes.append(blocks)
    return sizes


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 16384, 16385, 2**21 + 3, 2**40])
def test_layout_math(blocks: int) -> None:
    params = VerityParams(blocks, b"")
    sizes = naive_level_sizes(blocks)
    assert list(params.level_sizes) == sizes
    assert params.tree_blocks == sum(sizes)
    assert hash_area_size(params, superblock=False) == sum(sizes) * 4096
    assert hash_area_size(params, superblock=True) == (sum(sizes) + 1) * 4096
    starts = params.level_starts()
    # Top level first, then each lower level right after the one above it.
    assert all(starts[i] == starts[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    assert not sizes or starts[-1] == 0


def test_layout_known_shapes() -> None:
    assert VerityParams(1, b"").level_sizes == ()
    assert VerityParams(128, b"").level_sizes == (1,)
    assert VerityParams(129, b"").level_sizes == (2, 1)
    assert VerityParams(129, b"").level_starts() == (1, 0)
    assert VerityParams(128 * 128 + 1, b"").level_sizes == (129, 2, 1)


@pytest.mark.parametrize("size", [0, -4096, 1, 4095, 4097, 12288 + 512])
def test_sizes_not_multiple_of_block_are_rejected(size: int) -> None:
    with pytest.raises(UsageError, match="multiple of 4096"):
        blocks_for_size(size)


def test_blocks_for_size() -> None:
    assert blocks_for_size(4096) == 1
    assert blocks_for_size(4096 * 129) == 129


def test_params_validation() -> None:
    with pytest.raises(UsageError):
        VerityParams(0, b"")
    with pytest.raises(UsageError, match="at most 256"):
        VerityParams(1, bytes(257))


def test_parse_salt() -> None:
    assert parse_salt("-") == b""
    assert parse_salt("") == b""
    assert parse_salt("00ff") == b"\x00\xff"
    assert parse_salt("AB" * 256) == b"\xab" * 256
    for bad in ["zz", "abc", "0x01", "ab" * 257]:
        with pytest.raises(UsageError):
            parse_salt(bad)


def test_a_superblock_takes_a_uuid_or_its_16_bytes() -> None:
    params = VerityParams(8, b"x")
    volume = Guid("00000000-0000-0000-0000-00000badc0de")
    assert Superblock(params, volume) == Superblock(params, volume.bytes)
    assert Superblock(params, volume.bytes).volume == bytes(12) + b"\x0b\xad\xc0\xde"
    assert Superblock(params, volume.bytes).uuid == volume
    with pytest.raises(UsageError):
        Superblock(params, b"short")


def test_superblock_round_trip_and_field_offsets() -> None:
    params = VerityParams(123456789, bytes(range(7)))
    volume = Guid(bytes=os.urandom(16))
    raw = Superblock(params, volume).encode()
    assert len(raw) == 4096 and raw[512:] == bytes(3584)
    assert Superblock.decode(raw) == Superblock(params, volume)
    # Offsets of cryptsetup's packed little-endian struct verity_sb.
    assert raw[:8] == b"verity\0\0"
    assert struct.unpack_from("<II", raw, 8) == (1, 1)
    assert raw[16:32] == volume.bytes
    assert raw[32:64] == b"sha256".ljust(32, b"\0")
    assert struct.unpack_from("<IIQH", raw, 64) == (4096, 4096, 123456789, 7)
    assert raw[88:95] == bytes(range(7)) and raw[95:512] == bytes(417)


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, b"verify\0\0", "no verity superblock"),
        (8, struct.pack("<I", 2), "version"),
        (12, struct.pack("<I", 0), "hash type"),
        (32, b"sha1\0\0", "algorithm"),
        (64, struct.pack("<I", 512), "data block size"),
        (68, struct.pack("<I", 1024), "hash block size"),
        (80, struct.pack("<H", 300), "salt size"),
    ],
)
def test_superblock_decode_rejects(offset: int, value: bytes, field: str) -> None:
    raw = bytearray(Superblock(VerityParams(8, b"x"), os.urandom(16)).encode())
    raw[offset : offset + len(value)] = value
    with pytest.raises(VerificationError, match=field):
        Superblock.decode(raw)
    with pytest.raises(VerificationError, match="truncated"):
        Superblock.decode(raw[:100])


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1 :]


@pytest.fixture
def tree_and_data() -> tuple[VerityTree, bytes]:
    data = make_data(300, seed=3)
    return tree_of(data, b"salty"), data


def test_check_hash_area_accepts_matching(tree_and_data: tuple[VerityTree, bytes]) -> None:
    tree, _ = tree_and_data
    check_hash_area(tree, tree.tree_bytes(), tree.root_hash)


def test_check_hash_area_names_bad_data_block(tree_and_data: tuple[VerityTree, bytes]) -> None:
    good, data = tree_and_data
    recomputed = tree_of(flip(data, 200 * BLOCK_SIZE + 17), b"salty")
    with pytest.raises(VerificationError, match="data block 200 "):
        check_hash_area(recomputed, good.tree_bytes(), good.root_hash)


def test_check_hash_area_names_bad_hash_block(tree_and_data: tuple[VerityTree, bytes]) -> None:
    tree, _ = tree_and_data
    # 300 blocks: level 1 is tree block 0, level 0 is tree blocks 1-3; corrupt level-0 block 2.
    corrupt = flip(tree.tree_bytes(), 3 * BLOCK_SIZE + 5)
    with pytest.raises(VerificationError, match="hash block 2 of level 0 .tree block 3"):
        check_hash_area(tree, corrupt, tree.root_hash)
    with pytest.raises(
        VerificationError,
        match=r"^hash block 2 of level 0 \(tree block 3\) does not match level 1$",
    ):
        check_hash_area(tree, corrupt, tree.root_hash)
    with pytest.raises(VerificationError, match="level 1 .* the root hash"):
        check_hash_area(tree, flip(tree.tree_bytes(), 40), tree.root_hash)


def test_check_hash_area_names_zeroed_padding(tree_and_data: tuple[VerityTree, bytes]) -> None:
    tree, _ = tree_and_data
    # The tail of level 0's last block is padding, but it is hashed into level 1 all the same.
    corrupt = flip(tree.tree_bytes(), 4 * BLOCK_SIZE - 1)
    with pytest.raises(VerificationError, match="hash block 2 of level 0"):
        check_hash_area(tree, corrupt, tree.root_hash)


def test_check_hash_area_wrong_root(tree_and_data: tuple[VerityTree, bytes]) -> None:
    tree, _ = tree_and_data
    wrong = flip(tree.root_hash, 0)
    with pytest.raises(VerificationError, match="root hash mismatch"):
        check_hash_area(tree, tree.tree_bytes(), wrong)
    with pytest.raises(VerificationError, match="expected 16384"):
        check_hash_area(tree, tree.tree_bytes()[:-4096], tree.root_hash)


def test_check_hash_area_single_block() -> None:
    tree = tree_of(make_data(1, seed=1), b"")
    check_hash_area(tree, b"", tree.root_hash)
    with pytest.raises(VerificationError, match="root hash mismatch"):
        check_hash_area(tree, b"", flip(tree.root_hash, 3))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="updater")
    verity_command.register(parser.add_subparsers())
    return parser.parse_args(["verity", *argv])


def test_cli_arguments() -> None:
    args = parse("format", "d.img", "--hash-offset", "0x1000", "--salt", "-", "--json")
    assert (args.hash_offset, args.salt, args.json, args.func) == (
        4096, "-", True, verity_command.run_format
    )
    args = parse("verify", "d.img", "ab" * 32, "--hash-file", "h")
    assert (args.root_hash, args.hash_file, args.func) == (
        b"\xab" * 32, "h", verity_command.run_verify
    )


def test_the_uuid_option_reads_uuids_as_the_uuid_module_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    u = uuid.UUID(bytes=random.Random(8).randbytes(16))
    for text in (str(u), u.hex, u.hex.upper(), "{" + str(u) + "}", u.urn):
        args = parse("format", "d.img", "--hash-file", "h", "--uuid", text)
        assert args.uuid == Guid(bytes=u.bytes)
    with pytest.raises(SystemExit):
        parse("format", "d.img", "--hash-file", "h", "--uuid", "0" * 31 + "X")
    assert capsys.readouterr().err.splitlines()[-1] == (
        "updater verity format: error: argument --uuid: '0000000000000000000000000000000X' is "
        "not a UUID (32 hexadecimal digits, hyphens optional)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["format", "d.img"],  # neither hash location
        ["format", "d.img", "--hash-file", "h", "--hash-offset", "4096"],
        ["format", "d.img", "--hash-offset", "1000"],
        ["format", "d.img", "--hash-file", "h", "--uuid", "nope"],
        ["verify", "d.img", "abcd", "--hash-file", "h"],
        ["verify", "d.img", "zz" * 32, "--hash-file", "h"],
    ],
)
def test_cli_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


# --- hashing in forked workers ----------------------------------------------------------------


def test_forked_workers_give_the_same_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many small ranges over 1..4 worker processes: the same tree as one process, in order."""
    monkeypatch.setattr(verityfile, "RANGE_SIZE", 64 * 1024)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(40 * 64 * 1024 + 3 * 4096))  # 41 ranges, the last one short
    params = VerityParams(blocks_for_size(data.stat().st_size), b"salt")
    one = verityfile.compute_tree(str(data), params, workers=1)
    for workers in (2, 3, 4):
        seen: list[int] = []

        def progress(done: int, total: int, seen: list[int] = seen) -> None:
            seen.append(done)

        tree = verityfile.compute_tree(str(data), params, workers=workers, progress=progress)
        assert tree == one
        assert seen == sorted(seen) and seen[-1] == data.stat().st_size and len(seen) == 41


def test_a_failing_worker_is_an_error_and_leaves_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verityfile, "RANGE_SIZE", 64 * 1024)
    data = tmp_path / "data"
    data.write_bytes(bytes(8 * 64 * 1024))
    real = verityfile._ranges_digests

    def flaky(path: str, salt: bytes, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
        for (start, _), digests in zip(ranges, real(path, salt, ranges), strict=True):
            if start == 5 * 64 * 1024:
                raise OSError(5, "Input/output error")
            yield digests

    monkeypatch.setattr(verityfile, "_ranges_digests", flaky)
    with pytest.raises(DeviceError, match="failed in a worker process"):
        verityfile.compute_tree(str(data), VerityParams(128, b""), workers=2)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child was reaped


# --- what each refusal says -----------------------------------------------------------------------


def _message(call: object) -> tuple[str, str | None]:
    assert callable(call)
    with pytest.raises((UsageError, VerificationError)) as info:
        call()
    e = info.value
    assert isinstance(e, UsageError | VerificationError)
    return e.message, e.hint


def _sb(offset: int, value: bytes) -> bytes:
    raw = bytearray(Superblock(VerityParams(8, b"x"), uuid.UUID(int=1).bytes).encode())
    raw[offset : offset + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: parse_salt("zz"), ("salt 'zz' is not hexadecimal", "use - for no salt")),
        (lambda: parse_salt("ab" * 257), ("salt is 257 bytes, at most 256 fit the superblock",
                                          None)),
        (lambda: blocks_for_size(4095), ("data size 4095 is not a positive multiple of 4096 bytes",
                                         None)),
        (lambda: VerityParams(0, b""), ("dm-verity needs at least one data block", None)),
        (lambda: VerityParams(1, bytes(257)), ("salt is 257 bytes, at most 256 allowed", None)),
        (lambda: Superblock.decode(bytes(511)), ("verity superblock is truncated to 511 bytes",
                                                 None)),
        (lambda: Superblock.decode(_sb(0, b"x")), ("no verity superblock (the signature is "
                                                   "missing)", None)),
        (lambda: Superblock.decode(_sb(8, struct.pack("<I", 2))),
         ("superblock version is 2, expected 1", None)),
        (lambda: Superblock.decode(_sb(32, b"sha1\0\0")),
         ("superblock algorithm is 'sha1', expected 'sha256'", None)),
        (lambda: Superblock.decode(_sb(72, struct.pack("<Q", 0))),
         ("superblock has an invalid salt size or data block count", None)),
        (lambda: Superblock.decode(_sb(80, struct.pack("<H", 257))),
         ("superblock has an invalid salt size or data block count", None)),
        (lambda: VerityTree.from_leaf_digests(VerityParams(2, b""), bytes(32)),
         ("got 1 data digests for 2 blocks", None)),
        (lambda: digest_blocks(salted_hash(b""), bytes(100)),
         ("100 bytes is not a whole number of 4096-byte blocks", None)),
        (lambda: Superblock(VerityParams(8, b""), b"short"), ("a UUID has 16 bytes, not 5", None)),
    ],
)  # fmt: skip
def test_refusal_texts(call: object, expected: tuple[str, str | None]) -> None:
    assert _message(call) == expected


def test_superblock_limits_themselves_decode() -> None:
    raw = _sb(80, struct.pack("<H", 256))
    raw = raw[:88] + bytes(range(256)) + raw[344:]
    sb = Superblock.decode(raw)
    assert sb.params.salt == bytes(range(256)) and str(sb.uuid) == str(uuid.UUID(int=1))
    assert Superblock.decode(_sb(72, struct.pack("<Q", 1))).params.data_blocks == 1
    assert Superblock.decode(memoryview(_sb(0, b"verity"))).params.data_blocks == 8


def test_check_hash_area_a_self_consistent_tree_with_junk_padding(
    tree_and_data: tuple[VerityTree, bytes],
) -> None:
    """A tree whose level-0 padding is not zero but whose level 1 and root were hashed over it
    (naively, here) passes every parent check and every data digest: only the comparison with
    the recomputed tree refuses it."""
    tree, _ = tree_and_data
    salt = b"salty"
    disk = bytearray(tree.tree_bytes())  # 300 blocks: level 1 at tree block 0, level 0 at 1-3
    disk[4 * BLOCK_SIZE - 1] = 1
    level0 = [bytes(disk[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]) for i in (1, 2, 3)]
    digests = b"".join(hashlib.sha256(salt + block).digest() for block in level0)
    disk[:BLOCK_SIZE] = digests.ljust(BLOCK_SIZE, b"\0")
    root = hashlib.sha256(salt + bytes(disk[:BLOCK_SIZE])).digest()
    with pytest.raises(VerificationError, match="^hash level 0 differs from the recomputed tree$"):
        check_hash_area(tree, bytes(disk), root)


def test_hash_area_without_a_superblock_is_the_tree() -> None:
    tree = tree_of(make_data(3, seed=2), b"")
    assert tree.hash_area(None) == tree.tree_bytes()
    sb = Superblock(tree.params, uuid.UUID(int=1).bytes)
    assert tree.hash_area(sb) == sb.encode() + tree.tree_bytes()


def test_superblock_of_exactly_512_bytes_decodes() -> None:
    raw = Superblock(VerityParams(8, b"x"), uuid.UUID(int=1).bytes).encode()[:512]
    assert Superblock.decode(raw).params.data_blocks == 8


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (12, struct.pack("<I", 0), "superblock hash type is 0, expected 1"),
        (64, struct.pack("<I", 512), "superblock data block size is 512, expected 4096"),
        (68, struct.pack("<I", 1024), "superblock hash block size is 1024, expected 4096"),
        (32, b"\xff\xfe".ljust(32, b"\0"),
         "superblock algorithm is '\ufffd\ufffd', expected 'sha256'"),
        # only the NUL padding is taken off the name: "sha256X" is another algorithm
        (32, b"sha256X\0", "superblock algorithm is 'sha256X', expected 'sha256'"),
    ],
)  # fmt: skip
def test_superblock_field_refusal_texts(offset: int, value: bytes, message: str) -> None:
    raw = bytearray(Superblock(VerityParams(8, b"x"), uuid.UUID(int=1).bytes).encode())
    raw[offset : offset + len(value)] = value
    with pytest.raises(VerificationError) as info:
        Superblock.decode(raw)
    assert info.value.message == message

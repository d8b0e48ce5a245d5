"""``updater verity`` against the real ``veritysetup`` as the oracle, on sparse image files.

Every expected root hash and hash area here is produced by veritysetup in the same test run; the
two tools get the same data, salt and UUID and must write byte-identical files. No root needed:
``veritysetup format`` and ``verify`` work on plain files in user space.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VERITYSETUP = shutil.which("veritysetup", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        VERITYSETUP is None, reason="veritysetup not found (Debian package cryptsetup-bin)"
    ),
]

UUID = "5f0c1a2e-1111-4222-8333-944455556666"
SIZES = [1, 127, 128, 129, 16384, 16385]  # 16385 = 128*128+1: three levels, two worker ranges


def updater(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "updater", "verity", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def veritysetup(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert VERITYSETUP is not None
    return subprocess.run(
        [VERITYSETUP, *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LANG": "C.UTF-8"},
    )


def veritysetup_root(output: str) -> str:
    match = re.search(r"^Root hash:\s+([0-9a-f]{64})$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def in_place(path: Path, blocks: int) -> list[str]:
    """veritysetup arguments for data followed by its hash area in the same file."""
    offset = str(blocks * 4096)
    return [str(path), str(path), "--hash-offset", offset, "--data-blocks", str(blocks)]


def make_data(path: Path, blocks: int, seed: int) -> None:
    """A sparse file of ``blocks`` blocks: random first and last blocks, random blocks and
    bytes scattered in between, zeros elsewhere (zero blocks have equal digests, which is fine)."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(blocks * 4096)
        for index in {0, blocks - 1, *(rng.randrange(blocks) for _ in range(20))}:
            f.seek(index * 4096)
            f.write(rng.randbytes(4096))
        for _ in range(20):
            f.seek(rng.randrange(blocks * 4096))
            f.write(rng.randbytes(1))


def format_both(
    tmp_path: Path,
    blocks: int,
    mode: str,
    salt_args: list[str],
    superblock: bool,
) -> tuple[Path, Path, dict[str, object], str]:
    """Format copies of the same data with both tools; return (ours, theirs, our JSON, their root).

    In hash-offset mode the files compared are the data files with the tree inside; in
    hash-file mode the hash files. ``salt_args`` go to both tools, except that with no salt
    argument ours picks a random salt and veritysetup is given the one ours printed.
    """
    data = tmp_path / "data.img"
    make_data(data, blocks, seed=blocks)
    mine, theirs = tmp_path / "mine.img", tmp_path / "theirs.img"
    shutil.copyfile(data, mine)
    shutil.copyfile(data, theirs)
    extra = ([] if superblock else ["--no-superblock"]) + (["--uuid", UUID] if superblock else [])
    if mode == "hash-offset":
        offset = str(blocks * 4096)
        ours = updater("format", mine, "--hash-offset", offset, *salt_args, *extra, "--json")
        their_target = in_place(theirs, blocks)
        compared = (mine, theirs)
    else:
        hashes = (tmp_path / "mine.hash", tmp_path / "theirs.hash")
        ours = updater("format", mine, "--hash-file", hashes[0], *salt_args, *extra, "--json")
        their_target = [str(theirs), str(hashes[1])]
        compared = hashes
    assert ours.returncode == 0, ours.stderr
    result = json.loads(ours.stdout)
    their_salt = salt_args or ["--salt", str(result["salt"])]
    if not superblock:
        extra = ["--no-superblock"]
    out = veritysetup("format", *their_target, *their_salt, *extra).stdout
    return compared[0], compared[1], result, veritysetup_root(out)


@pytest.mark.parametrize("blocks", SIZES)
@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize("mode", ["hash-file", "hash-offset"])
def test_format_is_byte_identical(tmp_path: Path, blocks: int, superblock: bool, mode: str) -> None:
    salt = random.Random(blocks).randbytes(32).hex()
    ours, theirs, result, root = format_both(tmp_path, blocks, mode, ["--salt", salt], superblock)
    assert result["root_hash"] == root
    assert result["salt"] == salt and result["data_blocks"] == blocks
    assert result["hash_offset"] == (blocks * 4096 if mode == "hash-offset" else 0)
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("blocks", [1, 129])
@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize(
    "salt_args",
    [[], ["--salt", "-"], ["--salt="], ["--salt", "a5"], ["--salt", "0f" * 256]],
    ids=["random", "dash", "empty", "short", "256-bytes"],
)
def test_salts(tmp_path: Path, blocks: int, superblock: bool, salt_args: list[str]) -> None:
    ours, theirs, result, root = format_both(tmp_path, blocks, "hash-file", salt_args, superblock)
    assert result["root_hash"] == root
    if not salt_args:
        assert len(bytes.fromhex(str(result["salt"]))) == 32
    assert ours.read_bytes() == theirs.read_bytes()


def test_format_json_contract(tmp_path: Path) -> None:
    make_data(tmp_path / "d", 3, seed=1)
    out = updater("format", tmp_path / "d", "--hash-offset", "8192", "--salt", "-", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert sorted(result) == ["data_blocks", "hash_offset", "root_hash", "salt"]
    assert (result["data_blocks"], result["hash_offset"], result["salt"]) == (2, 8192, "")
    human = updater("format", tmp_path / "d", "--hash-offset", "8192", "--salt", "-")
    assert f"Root hash:       {result['root_hash']}\n" in human.stdout
    assert "Salt:            -\n" in human.stdout and "Data blocks:     2\n" in human.stdout


def veritysetup_formatted(tmp_path: Path, mode: str, superblock: bool) -> tuple[list[str], str]:
    """Data formatted by veritysetup; return (updater's location arguments, root hash)."""
    blocks = 300
    data = tmp_path / "data.img"
    make_data(data, blocks, seed=7)
    flags = ["--salt", "1234"] + ([] if superblock else ["--no-superblock"])
    if mode == "hash-offset":
        target = in_place(data, blocks)
        where = [str(data), "--hash-offset", str(blocks * 4096)]
    else:
        target = [str(data), str(tmp_path / "data.hash")]
        where = [str(data), "--hash-file", str(tmp_path / "data.hash")]
    root = veritysetup_root(veritysetup("format", *target, *flags).stdout)
    return where + ([] if superblock else ["--salt", "1234", "--no-superblock"]), root


def verify(where: list[str], root: str) -> subprocess.CompletedProcess[str]:
    return updater("verify", where[0], root, *where[1:])


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize("mode", ["hash-file", "hash-offset"])
def test_verify_accepts_veritysetup_trees(tmp_path: Path, mode: str, superblock: bool) -> None:
    where, root = veritysetup_formatted(tmp_path, mode, superblock)
    out = verify(where, root)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Verified 300 data blocks: root hash matches.\n"
    as_json = updater("verify", where[0], root, *where[1:], "--json")
    assert json.loads(as_json.stdout)["root_hash"] == root


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0x01]))


def assert_rejected(out: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), out.stderr


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize("mode", ["hash-file", "hash-offset"])
def test_verify_rejects_corruption(tmp_path: Path, mode: str, superblock: bool) -> None:
    where, root = veritysetup_formatted(tmp_path, mode, superblock)
    data = Path(where[0])
    flip_byte(data, 211 * 4096 + 100)
    assert_rejected(verify(where, root), "data block 211 does not match")
    flip_byte(data, 211 * 4096 + 100)
    assert verify(where, root).returncode == 0

    wrong_root = ("0" if root[0] != "0" else "1") + root[1:]
    assert_rejected(verify(where, wrong_root), "root hash mismatch")

    # 300 blocks: tree = level 1 (one block) then level 0 (three blocks), after the superblock.
    hash_path = data if mode == "hash-offset" else Path(where[2])
    tree_start = (300 * 4096 if mode == "hash-offset" else 0) + (4096 if superblock else 0)
    flip_byte(hash_path, tree_start + 2 * 4096 + 64)
    assert_rejected(verify(where, root), r"hash block 1 of level 0 \(tree block 2\)")


def test_verify_rejects_superblock_mismatches(tmp_path: Path) -> None:
    where, root = veritysetup_formatted(tmp_path, "hash-file", superblock=True)
    assert_rejected(
        updater("verify", where[0], root, *where[1:], "--salt", "99"), "superblock salt"
    )
    flip_byte(Path(where[2]), 72)  # data_blocks
    assert_rejected(verify(where, root), "superblock says 301 data blocks, expected 300")
    flip_byte(Path(where[2]), 72)
    flip_byte(Path(where[2]), 33)  # algorithm "sha256" -> "si..."
    assert_rejected(verify(where, root), "superblock algorithm")


@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "no-superblock"])
@pytest.mark.parametrize("mode", ["hash-file", "hash-offset"])
@pytest.mark.parametrize("blocks", [1, 129, 16385])
def test_veritysetup_verifies_updater_trees(
    tmp_path: Path, blocks: int, mode: str, superblock: bool
) -> None:
    data = tmp_path / "data.img"
    make_data(data, blocks, seed=11)
    flags = [] if superblock else ["--no-superblock"]
    if mode == "hash-offset":
        where = ["--hash-offset", str(blocks * 4096)]
        theirs = in_place(data, blocks)
    else:
        where = ["--hash-file", str(tmp_path / "hash")]
        theirs = [str(data), str(tmp_path / "hash")]
    out = updater("format", data, *where, *flags, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    salt = ["--salt", str(result["salt"])]
    if not superblock:
        theirs += [*flags, *salt, "--data-blocks", str(blocks)]
    assert veritysetup("verify", *theirs, str(result["root_hash"])).returncode == 0
    flip_byte(data, (blocks - 1) * 4096)
    assert veritysetup("verify", *theirs, str(result["root_hash"]), check=False).returncode != 0


def test_usage_errors(tmp_path: Path) -> None:
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(5000))
    out = updater("format", odd, "--hash-file", tmp_path / "h")
    assert out.returncode == 2 and "not a positive multiple of 4096" in out.stderr
    make_data(tmp_path / "d", 4, seed=2)
    out = updater("verify", tmp_path / "d", "ab" * 32, "--hash-file", odd, "--no-superblock")
    assert out.returncode == 2 and "salt must be given" in out.stderr
    assert updater("format", tmp_path / "d", "--hash-offset", "0").returncode == 2
    out = updater("format", tmp_path / "d", "--hash-file", tmp_path / "h", "--salt", "xyz")
    assert out.returncode == 2 and "not hexadecimal" in out.stderr

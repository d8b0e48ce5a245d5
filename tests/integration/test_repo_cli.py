"""``updater repo`` end to end on real images: squashfs (mksquashfs) and erofs (mkfs.erofs)
with their dm-verity tree written by ``veritysetup`` (the oracle), a kernel carrying the root
hash; the published image checked with the ``zstd`` tool; keys rotated and re-signed while a
client reading the directory (``updater releases --repo DIR``) keeps following."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Cli, need_tools, tool

pytestmark = pytest.mark.integration
BLOCK = 4096


@dataclass(frozen=True)
class Payload:
    usr: Path
    kernel: Path
    root_hash: str
    hash_offset: int


def make_payload(tmp: Path, fs: str, version: int) -> Payload:
    """A USR image as the image builder makes one: the filesystem, then at its size rounded up
    to 4096 a verity superblock and tree from veritysetup, and a kernel with the hash at 0x40."""
    need_tools("veritysetup", "mksquashfs" if fs == "squashfs" else "mkfs.erofs")
    tree = tmp / f"tree-{fs}-{version}"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "os-release").write_text(f"ID=test\nVERSION_ID={version}\n")
    (tree / "lib" / "noise").write_bytes(os.urandom(300_000))
    image = tmp / f"usr-{fs}-{version}.img"
    if fs == "squashfs":
        tool("mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-no-progress")
        used = int.from_bytes(image.read_bytes()[40:48], "little")
    else:
        tool("mkfs.erofs", "--quiet", str(image), str(tree))
        used = image.stat().st_size  # what mkfs.erofs writes: its superblock's block count
    offset = -(-used // BLOCK) * BLOCK
    os.truncate(image, offset)
    out = tool("veritysetup", "format", str(image), str(image), f"--hash-offset={offset}",
               f"--data-blocks={offset // BLOCK}", "--salt=-")  # fmt: skip
    match = re.search(r"^Root hash:\s+([0-9a-f]{64})$", out, re.MULTILINE)
    assert match, out
    kernel = tmp / f"vmlinuz-{fs}-{version}"
    data = bytearray(os.urandom(8192))
    data[0x40:0x80] = match.group(1).encode()
    kernel.write_bytes(bytes(data))
    return Payload(image, kernel, match.group(1), offset)


def published_file(repo: Path, path: str) -> Path:
    folder, _, name = path.rpartition("/")
    found = list((repo / "targets" / folder).glob(f"*.{name}"))
    assert len(found) == 1, found
    return found[0]


def test_publish_squashfs_and_erofs_and_read_them_back(tmp_path: Path, cli: Cli) -> None:
    need_tools("zstd")
    repo = tmp_path / "repo"
    init = json.loads(cli("repo", "init", str(repo), "--json").stdout)
    assert [init["roles"][r]["version"] for r in ("root", "targets", "snapshot", "timestamp")] == [
        1, 1, 1, 1,
    ]  # fmt: skip
    assert stat.S_IMODE((repo / "keys").stat().st_mode) == 0o700
    for fs, version in (("squashfs", "1.0.0"), ("erofs", "2")):
        payload = make_payload(tmp_path, fs, int(version[0]))
        usr, kernel = str(payload.usr), str(payload.kernel)
        out = cli("repo", "add", str(repo), "--version", version, "--usr", usr,
                  "--kernel", kernel, "--frame-size", "1", "--json").stdout  # fmt: skip
        doc = json.loads(out)["release"]
        assert doc["fs_type"] == fs and doc["root_hash"] == payload.root_hash
        assert doc["hash_offset"] == payload.hash_offset
        assert doc["size"] == payload.usr.stat().st_size
        compressed = published_file(repo, f"stable/x86_64/{version}/usr.img.zst")
        # the zstd tool restores the exact image from the concatenated frames
        plain = subprocess.run(["zstd", "-dc", str(compressed)], capture_output=True, check=True)
        assert plain.stdout == payload.usr.read_bytes()
        assert compressed.name.startswith(hashlib.sha256(compressed.read_bytes()).hexdigest())
    # a client reading the directory sees both, with the same verification as over HTTP
    trusted, state = str(repo / "metadata" / "root.json"), str(tmp_path / "state")
    listed = json.loads(cli("releases", "--repo", str(repo), "--trusted-root", trusted,
                            "--state-dir", state, "--arch", "x86_64", "--json").stdout)  # fmt: skip
    assert [r["version"] for r in listed["releases"]] == ["2", "1.0.0"]
    assert listed["releases"][0]["fs_type"] == "erofs"


def test_add_refuses_inconsistent_input(tmp_path: Path, cli: Cli) -> None:
    repo = tmp_path / "repo"
    cli("repo", "init", str(repo))
    payload = make_payload(tmp_path, "squashfs", 1)
    other = make_payload(tmp_path, "squashfs", 2)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))

    def add(*extra: str) -> subprocess.CompletedProcess[str]:
        return cli("repo", "add", str(repo), "--version", "1", *extra, check=False)

    wrong = add("--usr", str(payload.usr), "--kernel", str(other.kernel))
    assert wrong.returncode == 1
    assert "does not match the kernel's root hash" in wrong.stderr
    plain_kernel = tmp_path / "plain-vmlinuz"
    plain_kernel.write_bytes(bytes(8192))
    no_hash = add("--usr", str(payload.usr), "--kernel", str(plain_kernel))
    assert (
        no_hash.returncode == 2 and "carries no dm-verity root hash at byte 0x40" in no_hash.stderr
    )
    not_fs = add("--usr", str(payload.kernel), "--kernel", str(payload.kernel))
    assert not_fs.returncode == 2 and "not a squashfs or erofs image" in not_fs.stderr
    bad_version = add("--usr", str(payload.usr), "--kernel", str(payload.kernel), "--version", "01")
    assert bad_version.returncode == 2
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    add("--usr", str(payload.usr), "--kernel", str(payload.kernel)).check_returncode()
    again = add("--usr", str(payload.usr), "--kernel", str(payload.kernel))
    assert again.returncode == 2 and "release 1 is already published" in again.stderr


def test_rotations_and_resigning_keep_clients_following(tmp_path: Path, cli: Cli) -> None:
    repo = tmp_path / "repo"
    cli("repo", "init", str(repo))
    shipped = tmp_path / "shipped-root.json"
    shutil.copy(repo / "metadata" / "root.json", shipped)
    payload = make_payload(tmp_path, "squashfs", 1)
    cli("repo", "add", str(repo), "--version", "1", "--usr", str(payload.usr),
        "--kernel", str(payload.kernel))  # fmt: skip

    def releases(state: str) -> list[str]:
        where = str(tmp_path / state)
        out = cli("releases", "--repo", str(repo), "--trusted-root", str(shipped),
                  "--state-dir", where, "--arch", "x86_64", "--json").stdout  # fmt: skip
        return [r["version"] for r in json.loads(out)["releases"]]

    assert releases("early") == ["1"]
    for role in ("root", "timestamp", "snapshot", "targets"):
        doc = json.loads(cli("repo", "rotate", str(repo), role, "--json").stdout)
        assert doc["roles"][role]["keyids"] == [doc["new_keyid"]]
        assert (repo / "keys" / "retired").is_dir()
    cli("repo", "expire", str(repo), "--role", "all", "--expires-days", "30")
    shown = json.loads(cli("repo", "resign", str(repo), "--json").stdout)
    assert shown["roles"]["root"]["version"] == 7  # 4 rotations, expire all, resign all
    # a client that trusted the state before the rotations, and a new one from the shipped root
    assert releases("early") == ["1"]
    assert releases("fresh") == ["1"]
    # keys: never inside the served tree, private files only
    for served in (repo / "metadata", repo / "targets"):
        assert not any(b"PRIVATE KEY" in p.read_bytes() for p in served.rglob("*") if p.is_file())
    for key in (repo / "keys").rglob("*.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

"""USR payloads: /usr as squashfs with the dm-verity tree appended, and kernels with the hash.

The hash tree is written by the project's own ``updater verity format`` (byte-identical to
``veritysetup format``), with an empty salt and a verity superblock at the hash offset, which is
the filesystem size rounded up to 4096 bytes. The initrd recomputes that offset from the squashfs
superblock, so the manifest's value is informational for the boot path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from images import REPO, progress
from images.disk import USR_SIZE
from images.tree import stamp_version
from updater.errors import UpdaterError
from updater.run import run

VERITY_BLOCK = 4096

KERNEL_HASH_OFFSET = 0x40  # x86_64; Flatcar's GRUB reads verity.usrhash from here


def make_usr(
    tree: Path, version: int, out: Path, boot: tuple[Path, Path] | None = None
) -> dict[str, object]:
    """squashfs of tree/usr + verity tree at the 4096-aligned filesystem size; returns the
    manifest. Timestamps are pinned so that the same tree gives the same bytes.

    With ``boot`` (a kernel and an initrd), the filesystem also carries them at /boot/vmlinuz and
    /boot/initrd (Flatcar's /usr/boot) and is compressed with gzip instead of zstd: that is what
    the file backend's GRUB menu (grub/grub-files.cfg) reads through ``loopback``, and GRUB 2.06's
    squashfs driver reads gzip, xz and lzo but not zstd."""
    stamp_version(tree, version)
    progress(f"mksquashfs /usr for version {version}" + (" (with /boot, gzip)" if boot else ""))
    out.unlink(missing_ok=True)
    compression = ["-comp", "gzip"] if boot else ["-comp", "zstd", "-Xcompression-level", "15"]
    boot_dir = tree / "usr/boot"
    if boot is not None:
        boot_dir.mkdir()
        shutil.copyfile(boot[0], boot_dir / "vmlinuz")
        shutil.copyfile(boot[1], boot_dir / "initrd")
    try:
        run(
            ["mksquashfs", str(tree / "usr"), str(out), "-noappend", *compression, "-all-root",
             "-mkfs-time", "0", "-all-time", "0", "-quiet", "-no-progress"]
        )  # fmt: skip
    finally:
        if boot is not None:
            shutil.rmtree(boot_dir)
    # The initrd finds the hash tree at bytes_used (squashfs superblock, offset 40) rounded up to
    # 4096, so that is the offset used here too; mksquashfs's own 4K padding is only a file size.
    with out.open("rb") as f:
        superblock = f.read(96)
    if superblock[:4] != b"hsqs":
        raise UpdaterError(f"{out} is not a squashfs image")
    fs_size = int.from_bytes(superblock[40:48], "little")
    hash_offset = -(-fs_size // VERITY_BLOCK) * VERITY_BLOCK
    with out.open("r+b") as f:
        f.truncate(hash_offset)
    verity = verity_format(out, hash_offset, version)
    size = out.stat().st_size
    if size > USR_SIZE:
        raise UpdaterError(f"USR image of {size} bytes does not fit the {USR_SIZE}-byte partition")
    return {
        "version": version,
        "root_hash": verity["root_hash"],
        "salt": verity["salt"],
        "hash_offset": hash_offset,
        "data_blocks": verity["data_blocks"],
        "fs_type": "squashfs",
        "fs_size": fs_size,
        "size": size,
        "hash_algorithm": "sha256",
        "block_size": VERITY_BLOCK,
    }


def verity_format(path: Path, hash_offset: int, version: int) -> dict[str, object]:
    # A fixed UUID per version keeps the payload byte-for-byte reproducible.
    vuuid = f"00000000-0000-4000-8000-{version:012d}"
    argv = [sys.executable, "-m", "updater", "verity", "format", str(path), "--json",
            "--hash-offset", str(hash_offset), "--salt", "-", "--uuid", vuuid]  # fmt: skip
    result: dict[str, object] = json.loads(run(argv, cwd=str(REPO)).stdout)
    return result


def kernel_with_hash(src: Path, dest: Path, root_hash: str) -> None:
    data = bytearray(src.read_bytes())
    data[KERNEL_HASH_OFFSET : KERNEL_HASH_OFFSET + 64] = root_hash.encode("ascii")
    dest.write_bytes(bytes(data))

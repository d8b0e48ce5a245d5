#!/usr/bin/env python3
"""Build the bootable A/B test disk and the USR update payloads for the VM tests.

    .venv/bin/python images/build.py [--out DIR] [--json] [--version N]

Python: ``images.build.build_all(cache_dir=None) -> BuildResult`` (``build_payload`` for one more
version). Needs root (mmdebstrap, chroot) and the Debian packages listed in ``.ci/setup``.

What gets built, Flatcar style:

- one Debian bookworm tree (mmdebstrap, done once and cached on its own) with this project's
  ``updater`` package in ``/usr/lib/python3/dist-packages``;
- USR payloads, one per version: ``/usr`` as squashfs with ``VERSION_ID=<N>`` stamped in
  ``/usr/lib/os-release``, the dm-verity hash tree appended at the filesystem size rounded up to
  4096 (empty salt, superblock), and a JSON manifest with the root hash;
- per version, a copy of the Debian kernel with the 64 hex digits of the root hash at byte 0x40
  (where Flatcar's GRUB reads it from);
- one initramfs, built by dracut inside the tree with the project's module from ``initrd-hooks/``;
- the GPT disk (``updater.layout``): ESP with GRUB (``grub/grub.cfg``), kernel, initrd, grubenv and
  the first-boot marker; USR-A = version 1; USR-B empty; OEM; ROOT = the tree without ``/usr``;
- the installer (``images/installer.py``): its assets in ``/usr/share/updater/install`` of every
  version, and a network-boot kernel and initramfs that run ``updater install``.

Results live in ``${UPDATER_CACHE:-~/.cache/updater}/images/<hash>``, where the hash covers every
input (packages, mirror, this file, initrd-hooks, grub, systemd units, the updater package,
versions). A build
with unchanged inputs only checks that directory. Each directory is written under a temporary
name and renamed into place, so a crash never leaves a half-built result that looks complete.

Not done here: booting the disk (tests/vm), or anything that needs a network inside the image.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(_REPO))

from images import REPO, digest_files, progress  # noqa: E402
from images.disk import (  # noqa: E402
    ESP_SIZE,
    GRUB_EFI_DIR,
    GRUB_MODULES,
    OEM_SIZE,
    ROOT_SIZE,
    USR_SIZE,
    make_disk,
    make_esp,
    make_ext4,
    make_oem,
    partition_offsets,
    root_tree,
)
from images.installer import make_assets, make_installer  # noqa: E402
from images.payload import kernel_with_hash, make_usr  # noqa: E402
from images.tree import build_rootfs_tar, customize, kernel_version, rootfs_key  # noqa: E402
from updater.errors import UpdaterError  # noqa: E402
from updater.run import require_tool, run  # noqa: E402

__all__ = [
    "GRUB_EFI_DIR",
    "HOST_TOOLS",
    "BuildResult",
    "Payload",
    "VERSIONS",
    "build_all",
    "build_key",
    "export",
    "main",
    "partition_offsets",
    "payload",
    "publish_release",
]

# Host tools by Debian package, checked before anything starts.
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "sgdisk": "gdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "grub-mkimage": "grub-common",
    "unshare": "util-linux",
    "tar": "tar",
    "cpio": "cpio",
    "busybox": "busybox-static",
}
RECIPE = "7"  # bump to force a rebuild when something outside the hashed files changes
VERSIONS = (1, 2, 3, 4, 5)  # 1 on the disk; the rest published by the VM tests and the demo
# A release whose /usr carries its kernel and initrd (gzip squashfs): the file backend's GRUB
# menu boots it cold (tests/vm/test_files.py).
FILES_MENU_VERSION = 5


@dataclass(frozen=True)
class Payload:
    """One USR version: the partition image (filesystem + hash tree), its manifest and kernel."""

    version: int
    usr: Path
    manifest: Path
    kernel: Path


@dataclass(frozen=True)
class BuildResult:
    disk: Path  # full GPT disk, version 1 in USR-A, USR-B empty
    usr_v1: Path
    usr_v2: Path
    manifest_v1: Path
    manifest_v2: Path
    kernel_v1: Path
    kernel_v2: Path
    initrd: Path
    directory: Path
    # A signed release repository (updater repo) with version 1 published on the stable channel,
    # keys included (tests publish later versions with ``publish``); its root.json is the
    # trusted root inside the images.
    repo: Path
    # The network-boot installer: version 1's kernel, and an initramfs holding version 1's USR
    # image and ROOT; it runs `updater install` as the updater.install.* parameters say.
    installer_kernel: Path
    installer_initrd: Path

    def as_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = os.environ.get("UPDATER_CACHE") or str(Path.home() / ".cache" / "updater")
    return Path(base) / "images"


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


# Files under images/ that run an image or explain it but never go into one: editing them
# must not cost a rebuild.
NOT_BUILD_INPUTS = frozenset({"demo.py", "walkthrough.sh", "boot.sh", "README.md"})


def build_key(versions: Sequence[int]) -> str:
    h = hashlib.sha256(f"build {RECIPE} {rootfs_key()} {list(versions)}\n".encode())
    h.update(f"{USR_SIZE} {ESP_SIZE} {OEM_SIZE} {ROOT_SIZE} {GRUB_MODULES}".encode())
    inputs = [p for p in _files(REPO / "images") if p.name not in NOT_BUILD_INPUTS]
    for sub in ("initrd-hooks", "grub", "updater", "systemd"):
        inputs += list(_files(REPO / sub))
    digest_files(h, [*inputs, REPO / "pyproject.toml"])  # the runtime dependencies
    return h.hexdigest()[:20]


def check_host() -> None:
    if os.geteuid() != 0:
        raise UpdaterError("images/build.py needs root (mmdebstrap --mode=root, chroot)")
    for tool, package in HOST_TOOLS.items():
        require_tool(tool, package)
    if not (GRUB_EFI_DIR / "linux.mod").is_file():
        raise UpdaterError(
            f"{GRUB_EFI_DIR} is missing", hint="install the Debian package grub-efi-amd64-bin"
        )


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory into place; a concurrent builder may have won."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "result.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


KEEP_BUILDS = 4
PRUNE_AFTER = 3600.0  # seconds


def prune(root: Path, keep: Path) -> None:
    """Remove finished builds other than the newest few, once they are an hour old.

    Every edit of the updater package makes a new build (about 400 MB on disk). A build younger
    than PRUNE_AFTER may belong to a test session that has its paths but has not opened the
    files yet; older ones are left to whoever still has them open (unlinked files stay readable).
    """
    builds = sorted(
        (d for d in root.iterdir() if d.is_dir() and (d / "result.json").is_file()),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    now = time.time()
    for old in builds[KEEP_BUILDS:]:
        if old != keep and now - old.stat().st_mtime > PRUNE_AFTER:
            shutil.rmtree(old, ignore_errors=True)


def build_all(cache_dir: Path | None = None, *, extra_versions: Sequence[int] = ()) -> BuildResult:
    """Build (or find in the cache) the disk and the payloads of VERSIONS."""
    versions = sorted(set(VERSIONS) | set(extra_versions))
    check_host()
    root = cache_root(cache_dir)
    key = build_key(versions)
    final = root / key
    if (final / "result.json").is_file():
        os.utime(final)  # recently used: keep it out of prune()'s reach
        return _result(final)
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache: test sessions started together would otherwise all run
    # mmdebstrap and mksquashfs for the same key. The lock dies with its process.
    with (root / ".lock").open("a") as lock:
        if not _try_lock(lock):
            progress("waiting for another build in this cache")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "result.json").is_file():
            tarball = build_rootfs_tar(root)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
            try:
                _build_into(tmp, tarball, versions)
                publish(tmp, final)
                prune(root, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return _result(final)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _result(final: Path) -> BuildResult:
    return BuildResult(
        disk=final / "disk.img",
        usr_v1=final / "usr-v1.img",
        usr_v2=final / "usr-v2.img",
        manifest_v1=final / "manifest-v1.json",
        manifest_v2=final / "manifest-v2.json",
        kernel_v1=final / "vmlinuz-v1",
        kernel_v2=final / "vmlinuz-v2",
        initrd=final / "initrd.img",
        directory=final,
        repo=final / "repo",
        installer_kernel=final / "installer-vmlinuz",
        installer_initrd=final / "installer-initrd.img",
    )


def payload(directory: Path, version: int) -> Payload:
    return Payload(
        version,
        directory / f"usr-v{version}.img",
        directory / f"manifest-v{version}.json",
        directory / f"vmlinuz-v{version}",
    )


def _build_into(out: Path, tarball: Path, versions: Sequence[int]) -> None:
    start = time.monotonic()
    work = out / "work"
    tree = work / "tree"
    tree.mkdir(parents=True)
    progress("unpacking the Debian tree")
    run(["tar", "-C", str(tree), "--numeric-owner", "-xpf", str(tarball)])
    customize(tree)
    repo = out / "repo"
    updater_cli(["repo", "init", str(repo), "--expires-days", str(REPO_EXPIRY_DAYS)])
    trusted = tree / "usr/share/updater/root.json"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "metadata/root.json", trusted)
    kver = kernel_version(tree)
    shutil.copy2(tree / "boot/updater-initrd.img", out / "initrd.img")
    root = root_tree(tree, work)
    assets = make_assets(tree, root)  # in /usr: every version carries them
    hashes: dict[int, str] = {}
    for version in versions:
        p = payload(out, version)
        boot = (tree / f"boot/vmlinuz-{kver}", out / "initrd.img")
        manifest = make_usr(tree, version, p.usr, boot if version == FILES_MENU_VERSION else None)
        p.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        hashes[version] = str(manifest["root_hash"])
        kernel_with_hash(tree / f"boot/vmlinuz-{kver}", p.kernel, hashes[version])
        if version == 1:  # what the disk runs; tests publish later versions themselves
            publish_release(repo, p, out / "initrd.img")
    esp = make_esp(work, out / "vmlinuz-v1", out / "initrd.img", assets, hashes[1])
    oem = make_oem(work, assets)
    root_fs = make_ext4(work, "rootfs", "ROOT", root, ROOT_SIZE)
    make_disk(work, out / "disk.img", payload(out, 1).usr, esp, oem, root_fs)
    make_installer(out, work, tree, root, payload(out, 1).usr, kver)
    shutil.rmtree(work)
    (out / "result.json").write_text(
        json.dumps({"versions": list(versions), "kernel": kver}, indent=2, sort_keys=True) + "\n"
    )
    progress(f"built in {time.monotonic() - start:.0f} s")


# Cached builds are reused for as long as their inputs do not change, so the test repository's
# metadata must not expire under them (production repositories re-sign the timestamp daily).
REPO_EXPIRY_DAYS = 3650


def publish_release(repo: Path, p: Payload, initrd: Path, extra: Sequence[str] = ()) -> None:
    """Publish payload ``p`` into ``repo`` (stable channel, x86_64) with ``updater repo add``,
    as a release engineer would."""
    updater_cli(["repo", "add", str(repo), "--version", str(p.version), "--usr", str(p.usr),
                 "--kernel", str(p.kernel), "--initrd", str(initrd), "--channel", "stable",
                 "--arch", "x86_64", "--expires-days", str(REPO_EXPIRY_DAYS), *extra])  # fmt: skip


def updater_cli(argv: list[str]) -> None:
    """The project's own command line, from this checkout, as a publisher would run it."""
    run([sys.executable, "-m", "updater", *argv], cwd=str(REPO))


def export(result: BuildResult, dest: Path) -> BuildResult:
    """Copy the results into ``dest`` (sparse, reflinked where the filesystem can). Never hard
    links: a VM that boots the exported disk writes to it, and the cache must stay pristine."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(result.directory.iterdir()):
        if src.is_dir() and src.name == "repo":
            shutil.rmtree(dest / src.name, ignore_errors=True)
            run(["cp", "-a", "--reflink=auto", str(src), str(dest / src.name)])
        if not src.is_file():
            continue
        target = dest / src.name
        target.unlink(missing_ok=True)
        run(["cp", "--sparse=always", "--reflink=auto", str(src), str(target)])
    return _result(dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the A/B test disk and USR payloads (cached by content hash)."
    )
    parser.add_argument("--out", type=Path, help="also place the results in this directory")
    parser.add_argument("--json", action="store_true", help="print the result paths as JSON")
    parser.add_argument(
        "--version",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also build the USR payload for version N (repeatable; 1 to 4 are always built)",
    )
    parser.add_argument(
        "--cache", type=Path, help="cache directory (default: $UPDATER_CACHE/images)"
    )
    args = parser.parse_args(argv)
    if any(v < 1 for v in args.version):
        parser.error("--version must be at least 1")
    try:
        result = build_all(args.cache, extra_versions=args.version)
        if args.out:
            result = export(result, args.out)
    except UpdaterError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        sys.stderr.write(f"images/build.py: {exc.message}{hint}\n")
        return 1
    if args.json:
        data = result.as_json()
        for v in args.version:
            p = payload(result.directory, v)
            data |= {f"usr_v{v}": str(p.usr), f"manifest_v{v}": str(p.manifest),
                     f"kernel_v{v}": str(p.kernel)}  # fmt: skip
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for name, path in result.as_json().items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
  the first-boot marker; USR-A = version 1; USR-B empty; OEM; ROOT = the tree without ``/usr``.

Results live in ``${UPDATER_CACHE:-~/.cache/updater}/images/<hash>``, where the hash covers every
input (packages, mirror, this file, initrd-hooks, grub, the updater package, versions). A build
with unchanged inputs only checks that directory. Each directory is written under a temporary
name and renamed into place, so a crash never leaves a half-built result that looks complete.

Not done here: booting the disk (tests/vm), or anything that needs a network inside the image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO))

from updater import grubenv, slots  # noqa: E402
from updater.errors import UpdaterError  # noqa: E402
from updater.layout import MiB, create_disk, flatcar_layout  # noqa: E402
from updater.run import require_tool, run  # noqa: E402

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "python3",
    "kexec-tools",
    "cryptsetup-bin",
    "gdisk",
    "util-linux",
    "linux-image-amd64",
    "dracut",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "kmod",
)
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
}
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
# Everything grub/grub.cfg uses, built into the EFI binary: the ESP holds no module directory.
GRUB_MODULES = (
    "part_gpt fat ext2 normal configfile search search_label search_fs_uuid search_fs_file "
    "linux echo test loadenv sleep halt reboot cat serial terminal gzio efi_gop all_video"
).split()
DRACUT_MODULES = "bash base udev-rules rootfs-block kernel-modules dm updater"
# Loaded by udev from the initrd; virtio for the test VMs, the rest for the filesystems involved.
INITRD_DRIVERS = (
    "virtio_pci virtio_blk virtio_scsi sd_mod dm_mod dm_verity squashfs erofs ext4 vfat "
    "nls_cp437 nls_iso8859_1 nls_utf8 nls_ascii"
)
# Module trees no test VM needs; dropping them keeps USR small (they are most of the kernel).
PRUNED_MODULE_DIRS = (
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/bluetooth",
    "drivers/isdn",
    "drivers/iio",
    "drivers/usb",
    "drivers/mtd",
    "drivers/hwmon",
    "drivers/thunderbolt",
    "drivers/nfc",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
)
# Timers and services that only cost boot time in a network-less test VM.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service",
    "getty@tty1.service",
)
USR_SIZE = 512 * MiB
ESP_SIZE = 128 * MiB
OEM_SIZE = 32 * MiB
ROOT_SIZE = 512 * MiB
VERITY_BLOCK = 4096
KERNEL_HASH_OFFSET = 0x40  # x86_64; Flatcar's GRUB reads verity.usrhash from here
RECIPE = "4"  # bump to force a rebuild when something outside the hashed files changes
VERSIONS = (1, 2)


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

    def as_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


_START = time.monotonic()


def progress(message: str) -> None:
    sys.stderr.write(f"images: [{time.monotonic() - _START:5.0f} s] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------- inputs and cache


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = os.environ.get("UPDATER_CACHE") or str(Path.home() / ".cache" / "updater")
    return Path(base) / "images"


def mirror_sources() -> list[Path]:
    """The host's apt sources, reused for the image so the build uses the configured mirror."""
    found = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found = [p for p in found if p.stat().st_size > 0]
    if not found:
        raise UpdaterError("no apt sources in /etc/apt/sources.list*: cannot find a Debian mirror")
    return found


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def _digest_files(h: hashlib._Hash, paths: Sequence[Path]) -> None:
    for path in paths:
        h.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")


def rootfs_key() -> str:
    h = hashlib.sha256(f"rootfs {RECIPE} {SUITE} {' '.join(PACKAGES)}\n".encode())
    _digest_files(h, mirror_sources())
    return h.hexdigest()[:20]


def build_key(versions: Sequence[int]) -> str:
    h = hashlib.sha256(f"build {RECIPE} {rootfs_key()} {list(versions)}\n".encode())
    h.update(f"{USR_SIZE} {ESP_SIZE} {OEM_SIZE} {ROOT_SIZE} {GRUB_MODULES}".encode())
    inputs = [Path(__file__).resolve()]
    for sub in ("initrd-hooks", "grub", "updater"):
        inputs += list(_files(REPO / sub))
    _digest_files(h, inputs)
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


# ---------------------------------------------------------------------------- the Debian tree


def build_rootfs_tar(root: Path) -> Path:
    """mmdebstrap once per package list and mirror; everything else customises a copy."""
    key = rootfs_key()
    final = root / f"rootfs-{key}.tar"
    if final.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".rootfs-{key}.{os.getpid()}.tar"
    progress(f"mmdebstrap {SUITE} ({len(PACKAGES)} packages, a few minutes)")
    start = time.monotonic()
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--quiet",
        '--aptopt=APT::Install-Recommends "false"',
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(tmp),
        *map(str, mirror_sources()),
    ]
    try:
        run(argv)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    progress(f"mmdebstrap done in {time.monotonic() - start:.0f} s")
    return final


def chroot(tree: Path, script: str) -> None:
    """Run ``script`` with sh inside ``tree``, with /proc, /sys and /dev, in a private mount
    namespace so that the mounts vanish with the process even if the build is interrupted."""
    wrapper = (
        'set -e; t="$1"; mount -t proc proc "$t/proc"; mount -t sysfs sys "$t/sys"; '
        'mount --rbind /dev "$t/dev"; shift; exec chroot "$t" /bin/sh -ec "$1"'
    )
    run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            wrapper,
            "sh",
            str(tree),
            script,
        ],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def kernel_version(tree: Path) -> str:
    found = sorted(p.name for p in (tree / "usr/lib/modules").iterdir())
    if len(found) != 1:
        raise UpdaterError(f"expected one kernel in the image, found {found}")
    return found[0]


READY_SCRIPT = """#!/bin/sh
# Tells whoever watches the consoles (the VM tests) that the system is up, and from which USR.
. /usr/lib/os-release
dm=$(basename "$(readlink -f "$(findmnt -n -o SOURCE /usr)")")
part=$(ls /sys/class/block/"$dm"/slaves 2>/dev/null | head -n 1)
[ -n "$part" ] || part=$dm
uuid=$(blkid -s PARTUUID -o value /dev/"$part")
line="UPDATER-READY version=$VERSION_ID usr=$uuid"
echo "$line" > /dev/ttyS0 2>/dev/null || true
echo "$line" > /dev/console 2>/dev/null || true
"""

READY_UNIT = """[Unit]
Description=Report readiness on the consoles (UPDATER-READY)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/lib/updater-image/ready

[Install]
WantedBy=multi-user.target
"""

AUTOLOGIN = """[Service]
# Test VMs: root shell on the serial console without a password prompt.
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
"""


def customize(tree: Path) -> None:
    """Everything the test image needs beyond the packages, done once for all versions."""
    progress("customising the tree (updater package, units, initramfs)")
    # The project's updater, as the image's /usr/bin/updater.
    dest = tree / "usr/lib/python3/dist-packages/updater"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO / "updater", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write(tree / "usr/bin/updater", '#!/bin/sh\nexec python3 -m updater "$@"\n', 0o755)

    write(tree / "usr/lib/updater-image/ready", READY_SCRIPT, 0o755)
    write(tree / "etc/systemd/system/updater-ready.service", READY_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "updater-ready.service").unlink(missing_ok=True)
    (wants / "updater-ready.service").symlink_to("/etc/systemd/system/updater-ready.service")
    write(tree / "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf", AUTOLOGIN)
    getty = tree / "etc/systemd/system/getty.target.wants"
    getty.mkdir(parents=True, exist_ok=True)
    (getty / "serial-getty@ttyS0.service").unlink(missing_ok=True)
    (getty / "serial-getty@ttyS0.service").symlink_to("/lib/systemd/system/serial-getty@.service")
    for unit in MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    write(tree / "etc/hostname", "updater\n")
    write(tree / "root/.bashrc", "PS1='\\h:\\W\\$ '\n")
    # No network in the test VMs, and an empty fstab: the initrd mounts / and /usr.
    write(tree / "etc/fstab", "# / and /usr are mounted by the initrd (updater dracut module)\n")
    (tree / "etc/machine-id").unlink(missing_ok=True)  # created on first boot by the initrd

    kver = kernel_version(tree)
    mods = tree / "usr/lib/modules" / kver / "kernel"
    for sub in PRUNED_MODULE_DIRS:
        shutil.rmtree(mods / sub, ignore_errors=True)

    hooks = tree / "usr/lib/dracut/modules.d/90updater"
    shutil.rmtree(hooks, ignore_errors=True)
    shutil.copytree(REPO / "initrd-hooks/90updater", hooks)
    for f in hooks.iterdir():
        f.chmod(0o755)
    # dracut inside the tree: its own dracut and kernel modules, so the initrd matches the /usr
    # it will mount. No host-only mode, an explicit module list and driver list (small initrd).
    chroot(
        tree,
        f"depmod {kver}; "
        f"dracut --force --no-hostonly --no-hostonly-cmdline --nofscks --no-early-microcode "
        f"--compress=gzip --modules '{DRACUT_MODULES}' --drivers '{INITRD_DRIVERS}' "
        f"/boot/updater-initrd.img {kver}",
    )


def stamp_version(tree: Path, version: int) -> None:
    path = tree / "usr/lib/os-release"
    lines = [
        line
        for line in path.read_text().splitlines()
        if not line.startswith(("VERSION_ID=", "IMAGE_VERSION=", "PRETTY_NAME="))
    ]
    lines += [
        f"VERSION_ID={version}",
        f"IMAGE_VERSION={version}",
        f'PRETTY_NAME="updater test image, version {version}"',
    ]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- payloads


def make_usr(tree: Path, version: int, out: Path) -> dict[str, object]:
    """squashfs of tree/usr + verity tree at the 4096-aligned filesystem size; returns the
    manifest. Timestamps are pinned so that the same tree gives the same bytes."""
    stamp_version(tree, version)
    progress(f"mksquashfs /usr for version {version}")
    out.unlink(missing_ok=True)
    run(
        ["mksquashfs", str(tree / "usr"), str(out), "-noappend", "-comp", "zstd",
         "-Xcompression-level", "15", "-all-root", "-mkfs-time", "0", "-all-time", "0",
         "-quiet", "-no-progress"]
    )  # fmt: skip
    fs_size = out.stat().st_size
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


# ---------------------------------------------------------------------------- the disk


def copy_into(disk: Path, offset: int, src: Path, limit: int) -> None:
    """Write ``src`` into ``disk`` at ``offset`` without writing zero chunks (keeps it sparse)."""
    size = src.stat().st_size
    if size > limit:
        raise UpdaterError(f"{src.name} ({size} bytes) does not fit its {limit}-byte partition")
    chunk = 1 << 20
    zero = bytes(chunk)
    with src.open("rb") as fin, disk.open("r+b") as fout:
        pos = 0
        while block := fin.read(chunk):
            if block != zero[: len(block)]:
                fout.seek(offset + pos)
                fout.write(block)
            pos += len(block)


def mtools(argv: list[str]) -> None:
    # mtools refuses images whose geometry it doubts unless told not to check.
    run(argv, env={"MTOOLS_SKIP_CHECK": "1"})


def make_esp(work: Path, kernel: Path, initrd: Path, env_block: bytes) -> Path:
    progress("ESP: GRUB, kernel, initrd, grubenv")
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", "EFI-SYSTEM", "-C", str(esp), str(ESP_SIZE // 1024)])
    grub_efi = work / "BOOTX64.EFI"
    # The prefix has no device: GRUB takes the partition it was loaded from, the ESP.
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", str(GRUB_EFI_DIR), "-p", "/EFI/BOOT",
         "-o", str(grub_efi), *GRUB_MODULES])  # fmt: skip
    (work / "grubenv").write_bytes(env_block)
    (work / "first_boot").write_bytes(b"")
    img = ["-i", str(esp)]
    mtools(["mmd", *img, "::/EFI", "::/EFI/BOOT", "::/flatcar"])
    mtools(["mcopy", *img, str(grub_efi), "::/EFI/BOOT/BOOTX64.EFI"])
    mtools(["mcopy", *img, str(REPO / "grub/grub.cfg"), "::/EFI/BOOT/grub.cfg"])
    mtools(["mcopy", *img, str(kernel), "::/flatcar/vmlinuz-a"])
    mtools(["mcopy", *img, str(initrd), "::/flatcar/initrd-a"])
    mtools(["mcopy", *img, str(initrd), "::/flatcar/initrd-b"])
    mtools(["mcopy", *img, str(work / "grubenv"), "::/flatcar/grubenv"])
    mtools(["mcopy", *img, str(work / "first_boot"), "::/flatcar/first_boot"])
    return esp


def make_ext4(work: Path, name: str, label: str, content: Path, size: int) -> Path:
    image = work / f"{name}.img"
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-L", label, "-d", str(content), "-E", "root_owner=0:0", str(image)])
    return image


def _special_files(directory: str, names: list[str]) -> list[str]:
    """Device nodes, fifos and sockets: never copied by reading them (see root_tree)."""
    return [
        n
        for n in names
        if not stat.S_ISDIR(m := os.lstat(os.path.join(directory, n)).st_mode)
        and not stat.S_ISREG(m)
        and not stat.S_ISLNK(m)
    ]


def root_tree(tree: Path, work: Path) -> Path:
    """ROOT's contents: the tree without /usr (an empty mount point) and without /boot's files
    (they live on the ESP). The merged-usr symlinks bin, sbin, lib, lib64 stay on ROOT."""
    progress("ROOT: the tree without /usr")
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    # /dev, /proc, /sys and /run are mount points: copying the device nodes mmdebstrap leaves in
    # /dev would read /dev/zero or /dev/full forever and fill the host's disk.
    mount_points = ("usr", "boot", "dev", "proc", "sys", "run")
    for entry in tree.iterdir():
        if entry.name in mount_points or entry.name.startswith(("vmlinuz", "initrd.img")):
            continue
        dest = root / entry.name
        if entry.is_symlink():
            dest.symlink_to(os.readlink(entry))
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, ignore=_special_files)
        else:
            shutil.copy2(entry, dest)
    for mount_point in mount_points:
        (root / mount_point).mkdir(mode=0o755)
    return root


def make_oem(work: Path) -> Path:
    oem = work / "oem"
    shutil.rmtree(oem, ignore_errors=True)
    write(
        oem / "grub.cfg",
        "# OEM settings, sourced by the ESP grub.cfg (as Flatcar does)\n"
        'set oem_id="qemu"\n'
        'set linux_append="updater.test=1"\n',
    )
    return make_ext4(work, "oem", "OEM", oem, OEM_SIZE)


def make_disk(work: Path, out: Path, usr_a: Path, esp: Path, oem: Path, root: Path) -> None:
    progress("disk: GPT, ESP, USR-A, OEM, ROOT")
    layout = flatcar_layout(
        usr_size=USR_SIZE, esp_size=ESP_SIZE, oem_size=OEM_SIZE, root_size=ROOT_SIZE
    )
    out.unlink(missing_ok=True)
    create_disk(layout, str(out), overwrite=True)
    offsets = partition_offsets(out)
    for label, src in (("EFI-SYSTEM", esp), ("USR-A", usr_a), ("OEM", oem), ("ROOT", root)):
        number = layout.partition(label).number
        start, size = offsets[number]
        copy_into(out, start, src, size)


def partition_offsets(disk: Path) -> dict[int, tuple[int, int]]:
    """Partition number -> (byte offset, byte size), as sgdisk laid them out."""
    text = run(["sgdisk", "--print", str(disk)]).stdout.decode()
    found: dict[int, tuple[int, int]] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Number"):
            in_table = True
            continue
        fields = line.split()
        if in_table and len(fields) >= 3 and fields[0].isdigit():
            first, last = int(fields[1]), int(fields[2])
            found[int(fields[0])] = (first * 512, (last - first + 1) * 512)
    return found


def initial_env(root_hash: str) -> bytes:
    layout = flatcar_layout(usr_size=USR_SIZE, esp_size=ESP_SIZE, oem_size=OEM_SIZE)
    table = [
        slots.Slot(p.number, p.label, p.partuuid, p.attributes)
        for p in layout.partitions
        if p.type_guid == slots.USR_TYPE
    ]
    return grubenv.render(grubenv.slot_vars(table, {"A": root_hash}))


# ---------------------------------------------------------------------------- entry points


def build_all(cache_dir: Path | None = None, *, extra_versions: Sequence[int] = ()) -> BuildResult:
    """Build (or find in the cache) the disk and the version 1 and 2 payloads."""
    versions = sorted(set(VERSIONS) | set(extra_versions))
    check_host()
    root = cache_root(cache_dir)
    key = build_key(versions)
    final = root / key
    if not (final / "result.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tarball = build_rootfs_tar(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            _build_into(tmp, tarball, versions)
            publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _result(final)


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
    kver = kernel_version(tree)
    shutil.copy2(tree / "boot/updater-initrd.img", out / "initrd.img")
    hashes: dict[int, str] = {}
    for version in versions:
        p = payload(out, version)
        manifest = make_usr(tree, version, p.usr)
        p.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        hashes[version] = str(manifest["root_hash"])
        kernel_with_hash(tree / f"boot/vmlinuz-{kver}", p.kernel, hashes[version])
    esp = make_esp(work, out / "vmlinuz-v1", out / "initrd.img", initial_env(hashes[1]))
    oem = make_oem(work)
    root = make_ext4(work, "rootfs", "ROOT", root_tree(tree, work), ROOT_SIZE)
    make_disk(work, out / "disk.img", payload(out, 1).usr, esp, oem, root)
    shutil.rmtree(work)
    (out / "result.json").write_text(
        json.dumps({"versions": list(versions), "kernel": kver}, indent=2, sort_keys=True) + "\n"
    )
    progress(f"built in {time.monotonic() - start:.0f} s")


def export(result: BuildResult, dest: Path) -> BuildResult:
    """Copy the results into ``dest`` (sparse, reflinked where the filesystem can). Never hard
    links: a VM that boots the exported disk writes to it, and the cache must stay pristine."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(result.directory.iterdir()):
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
        help="also build the USR payload for version N (repeatable; 1 and 2 are always built)",
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

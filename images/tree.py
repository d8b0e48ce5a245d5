"""The Debian tree behind every image: mmdebstrap once, then customisation and the initramfs.

The mmdebstrap result is cached as a tarball keyed only on the package list, the suite and the
host's apt sources, so that changes to the customisation (units, initrd module, updater package)
rebuild in a minute instead of downloading again. Customisation runs on an unpacked copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

from images import REPO, digest_files, progress
from updater.errors import UpdaterError
from updater.run import run

TREE_RECIPE = "4"  # bump when the mmdebstrap invocation changes in a way the key does not see

SUITE = "bookworm"

# dracut rather than dracut-core: the kernel package needs a linux-initramfs-tool, and without
# dracut apt would pull in initramfs-tools.
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
    "python3-parted",  # updater install partitions with pyparted (Debian's build, 3.12)
    "criu",  # checkpoints of processes across a kexec (updater checkpoint, [checkpoint])
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

DRACUT_MODULES = "bash base udev-rules rootfs-block kernel-modules dm updater"

# Loaded by udev from the initrd; virtio for the test VMs, the rest for the filesystems involved.
INITRD_DRIVERS = (
    "virtio_pci virtio_blk virtio_scsi sd_mod dm_mod dm_verity squashfs erofs ext4 vfat "
    "nls_cp437 nls_iso8859_1 nls_utf8 nls_ascii"
)


def mirror_sources() -> list[Path]:
    """The host's apt sources, reused for the image so the build uses the configured mirror."""
    found = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found = [p for p in found if p.stat().st_size > 0]
    if not found:
        raise UpdaterError("no apt sources in /etc/apt/sources.list*: cannot find a Debian mirror")
    return found


def rootfs_key() -> str:
    h = hashlib.sha256(f"rootfs {TREE_RECIPE} {SUITE} {' '.join(PACKAGES)}\n".encode())
    digest_files(h, mirror_sources())
    return h.hexdigest()[:20]


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


# The project's units (systemd/) go where packages put theirs. Only updater-sync.service is
# enabled: the agent and the health-gated mark-good would change the A/B state by themselves,
# which the VM tests drive step by step (test_kexec relies on a trial slot NOT being marked good
# by itself); a test that wants them enables them (systemctl enable, or a symlink in the tree).
# updater-restore.service only acts on a checkpoint that `updater kexec` wrote;
# updater-kexec-prepared.service changes nothing unless `updater kexec --prepare` ran, and then
# it is what counts the prepared kernel's try: enabled, as a package would enable them.
ENABLED_UNITS = {
    "updater-sync.service": ("sysinit.target.wants",),
    "updater-restore.service": ("multi-user.target.wants",),
    "updater-kexec-prepared.service": ("kexec.target.wants",),
}


def install_units(tree: Path) -> None:
    dest = tree / "usr/lib/systemd/system"
    dest.mkdir(parents=True, exist_ok=True)
    for unit in sorted((REPO / "systemd").glob("*.service")):
        shutil.copyfile(unit, dest / unit.name)
        (dest / unit.name).chmod(0o644)
    for name, targets in ENABLED_UNITS.items():
        for wants in targets:
            link = tree / "etc/systemd/system" / wants / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/usr/lib/systemd/system/{name}")


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies, as pyproject.toml declares them (one source of truth)."""
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return [str(r) for r in project["dependencies"]]


def install_python_deps(tree: Path) -> None:
    """The updater's Python dependencies into the image's dist-packages, as binary wheels for the
    image's CPython (3.11, like the host's) taken through the host's pip and its cache. The image
    has no network and no compiler, and Debian's packaged versions lag the ones the project pins."""
    progress("Python dependencies (wheels for the image's CPython 3.11)")
    target = tree / "usr/lib/python3/dist-packages"
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(target), "--upgrade", "--no-compile",
         "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
         "--platform", "manylinux_2_17_x86_64", "--platform", "linux_x86_64",
         *runtime_requirements()],
        env={k: v for k, v in os.environ.items() if k.startswith("PIP_")},  # the host's pip setup
    )  # fmt: skip
    # pip's own bookkeeping and entry points are of no use inside the image.
    shutil.rmtree(target / "bin", ignore_errors=True)


NETWORK = """# Test VMs: QEMU user networking (10.0.2.0/24, gateway 10.0.2.2), no DHCP wait.
[Match]
Driver=virtio_net

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


UPDATER_TOML = """# Test image: the VM tests serve the release repository at this address
# (QEMU guestfwd to a server on the host's loopback).
[update]
repo = "http://10.0.2.100"
"""


# /usr/bin/updater: the interpreter runs the entry point directly, as an installed package's
# console script does. A shell wrapper running `python3 -m updater` costs a shell's start and
# the module runner's imports (contextlib, importlib.util) on every command: about 45 ms a
# command under emulation (issue 12's start-up goal).
ENTRY_SCRIPT = """#!/usr/bin/python3
import sys

from updater.cli import main

sys.exit(main())
"""


def customize(tree: Path) -> None:
    """Everything the test image needs beyond the packages, done once for all versions."""
    progress("customising the tree (updater package, units, initramfs)")
    install_python_deps(tree)
    # The project's updater, as the image's /usr/bin/updater.
    dest = tree / "usr/lib/python3/dist-packages/updater"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO / "updater", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write(tree / "usr/bin/updater", ENTRY_SCRIPT, 0o755)

    install_units(tree)
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
    # Releases come from the host: VM tests serve a repository at this guest address (guestfwd).
    write(tree / "etc/updater/updater.toml", UPDATER_TOML)
    # A NIC appears only in VMs that are given one (restricted user networking to the host).
    write(tree / "etc/systemd/network/50-qemu.network", NETWORK)
    networkd = tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    networkd.unlink(missing_ok=True)
    networkd.symlink_to("/lib/systemd/system/systemd-networkd.service")
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
    # /usr is a squashfs with every timestamp pinned to 0 (reproducible bytes) and read-only, so
    # timestamp-checked .pyc files would be stale and Python would recompile every module on
    # every run (seconds per `updater` call under emulation). Hash-based .pyc files that are not
    # rechecked fit an immutable /usr: sources change only with a new image. Forced (-f): Debian's
    # packages leave timestamp-based .pyc files behind, which compileall would otherwise keep as
    # "up to date" (the stdlib's were: every import of argparse, typing, dataclasses... compiled
    # its source again, about 1.3 s per `updater status` in the VM).
    chroot(
        tree,
        "python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "
        "/usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null; "
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

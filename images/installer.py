"""The installer: its assets in the OS tree, and the network-boot kernel and initramfs.

Assets (``/usr/share/updater/install``, ``[install] assets``): what ``updater install`` puts on
a disk besides the release. They live in ``/usr``, so the release carries them, as Flatcar's
``/usr`` carries ``flatcar-install``:

- ``grub/BOOTX64.EFI``: GRUB built here by ``grub-mkimage`` with the modules ``grub/grub.cfg``
  needs (the same binary as on the test disk's ESP), and ``grub/grub.cfg``;
- ``root/``: ROOT as the test disk has it (the tree without ``/usr``);
- ``oem/qemu/``: the OEM settings of the test VMs.

The network-boot installer is the OS itself, run from memory, as Flatcar's PXE image is: the
release's kernel and an initramfs made of two concatenated archives:

1. (gzip) a static busybox and ``/init``, the two kernel modules ``/init`` needs (loop,
   squashfs), and the root filesystem: ``root/`` with the installer's own settings on top
   (DHCP on every Ethernet link, ``updater-installer.service``, no ``UPDATER-READY``);
2. (uncompressed: it is compressed already) ``installer/usr.img``, the release's USR image.

``/init`` mounts ``usr.img`` read-only at ``/usr`` (the kernel's rootfs is a tmpfs when no
``root=`` is given) and executes systemd. ``updater-installer.service`` runs
``updater install --kernel-cmdline`` once the network is up, with its output on the console;
the serial console's root shell starts only after it ended, so a failed install leaves a shell.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

from images import REPO, progress
from images.disk import GRUB_EFI_DIR, GRUB_MODULES
from images.tree import write
from updater.errors import UpdaterError
from updater.initrdcpio import padding_after
from updater.run import run

ASSETS = "usr/share/updater/install"
OEM_QEMU = (
    "# OEM settings, sourced by the ESP grub.cfg (as Flatcar does)\n"
    'set oem_id="qemu"\n'
    'set linux_append="updater.test=1"\n'
)
BUSYBOX = Path("/bin/busybox")
INIT_MODULES = ("kernel/drivers/block/loop.ko", "kernel/fs/squashfs/squashfs.ko")


def make_assets(tree: Path, root: Path) -> Path:
    """The assets into ``tree``'s /usr (module docstring); returns their directory."""
    progress("installer assets: GRUB, ROOT, OEM")
    assets = tree / ASSETS
    shutil.rmtree(assets, ignore_errors=True)
    (assets / "grub").mkdir(parents=True)
    # The prefix has no device: GRUB takes the partition it was loaded from, the ESP.
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", str(GRUB_EFI_DIR), "-p", "/EFI/BOOT",
         "-o", str(assets / "grub/BOOTX64.EFI"), *GRUB_MODULES])  # fmt: skip
    shutil.copyfile(REPO / "grub/grub.cfg", assets / "grub/grub.cfg")
    shutil.copytree(root, assets / "root", symlinks=True)
    write(assets / "oem/qemu/grub.cfg", OEM_QEMU)
    return assets


INIT = """#!/installer/busybox sh
# PID 1 until systemd: the OS's /usr from the image in this initramfs, then systemd.
B=/installer/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() {
    echo "UPDATER-INSTALL-FAILED: $*"
    exec $B sh
}
for m in $($B cat /installer/modules.order); do
    $B insmod "/installer/modules/$m" || fail "cannot load $m"
done
$B mount -t squashfs -o ro,loop /installer/usr.img /usr || fail "cannot mount /usr"
echo "updater installer: /usr from the release image, starting systemd"
exec /usr/lib/systemd/systemd
"""

INSTALLER_UNIT = """[Unit]
Description=Install the OS as the kernel command line says (updater install)
ConditionKernelCommandLine=updater.install.disk
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStartPre=/bin/echo UPDATER-INSTALLER-START
ExecStartPre=/bin/udevadm settle --timeout=60
ExecStart=/usr/bin/updater install --kernel-cmdline
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
"""

# The console's shell only once the installer is done: its output and a login prompt would mix.
GETTY_AFTER = """[Unit]
After=updater-installer.service
"""

DHCP = """# The installer: DHCP on every Ethernet link, as the firmware's network boot did.
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

WAIT_ONLINE = """[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=120
"""

UNIT_PATH = Path("etc/systemd/system/updater-installer.service")

UPDATER_TOML = """# The network-boot installer: the rest comes from the kernel command line.
[update]
repo = "http://10.0.2.100"
"""


def make_installer(out: Path, work: Path, tree: Path, root: Path, usr: Path, kver: str) -> None:
    """``installer-vmlinuz`` and ``installer-initrd.img`` in ``out`` (module docstring)."""
    progress("network-boot installer: kernel and initramfs")
    check_static(BUSYBOX)
    stage = work / "installer-root"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(root, stage, symlinks=True)
    _settings(stage)
    modules = stage / "installer/modules"
    modules.mkdir(parents=True)
    order = []
    for rel in _with_dependencies(tree / "usr/lib/modules" / kver, INIT_MODULES):
        shutil.copyfile(tree / "usr/lib/modules" / kver / rel, modules / Path(rel).name)
        order.append(Path(rel).name)
    write(stage / "installer/modules.order", "\n".join(order) + "\n")
    shutil.copyfile(BUSYBOX, stage / "installer/busybox")
    (stage / "installer/busybox").chmod(0o755)
    write(stage / "init", INIT, 0o755)
    os.mknod(stage / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
    first = gzip.compress(_cpio(stage), compresslevel=6, mtime=0)
    big = work / "installer-usr"
    (big / "installer").mkdir(parents=True)
    os.link(usr, big / "installer/usr.img")
    initrd = first + padding_after(len(first)) + _cpio(big, "installer/usr.img")
    (out / "installer-initrd.img").write_bytes(initrd)
    shutil.copyfile(tree / "boot" / f"vmlinuz-{kver}", out / "installer-vmlinuz")
    shutil.rmtree(stage)
    shutil.rmtree(big)


def _settings(stage: Path) -> None:
    units = stage / "etc/systemd/system"
    write(stage / UNIT_PATH, INSTALLER_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / UNIT_PATH.name).symlink_to(f"/{UNIT_PATH}")
    write(units / "serial-getty@ttyS0.service.d/after-installer.conf", GETTY_AFTER)
    # No UPDATER-READY from the installer (the VM tests wait for the installed OS's), and none
    # of the project's units: no disk here was booted from. Masked, not just not enabled:
    # without /etc/machine-id systemd takes this for a first boot and enables every unit its
    # presets allow (Debian's allow all).
    for rel in ("updater-ready.service", "multi-user.target.wants/updater-ready.service",
                "sysinit.target.wants/updater-sync.service"):  # fmt: skip
        (units / rel).unlink()
    for unit in ["updater-ready.service", *(p.name for p in (REPO / "systemd").glob("*.service"))]:
        (units / unit).symlink_to("/dev/null")
    wait = units / "systemd-networkd-wait-online.service"
    wait.unlink(missing_ok=True)  # the image masks it; the installer waits for its network
    write(units / "systemd-networkd-wait-online.service.d/any.conf", WAIT_ONLINE)
    networks = stage / "etc/systemd/network"
    for old in networks.glob("*.network"):
        old.unlink()
    write(networks / "50-dhcp.network", DHCP)
    write(stage / "etc/updater/updater.toml", UPDATER_TOML)
    write(stage / "etc/hostname", "installer\n")


def _with_dependencies(base: Path, wanted: tuple[str, ...]) -> list[str]:
    """``wanted`` modules after everything they depend on (``modules.dep``), in load order."""
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel not in deps:
            raise UpdaterError(f"kernel module {rel} is not in {base}/modules.dep")
        for dep in deps[rel]:
            visit(dep)
        if rel not in order:
            order.append(rel)

    for rel in wanted:
        visit(rel)
    return order


def _cpio(directory: Path, *names: str) -> bytes:
    """A newc archive of ``names`` (default: everything) below ``directory``, owned by root."""
    if not names:
        names = tuple(
            str(p.relative_to(directory)) for p in sorted(directory.rglob("*"))
        )
    listing = "\0".join(names).encode() + b"\0"
    return run(["cpio", "--create", "--format=newc", "--null", "--quiet", "--owner=0:0"],
               input=listing, cwd=str(directory)).stdout  # fmt: skip


def check_static(path: Path) -> None:
    """``/init`` runs before any library is there: busybox must have no ELF interpreter
    (Debian's busybox-static, not busybox)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise UpdaterError(
            f"{path} is missing", hint="install the Debian package busybox-static"
        ) from None
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise UpdaterError(f"{path} is not a 64-bit ELF program")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3:  # PT_INTERP
            raise UpdaterError(
                f"{path} is linked dynamically", hint="install the Debian package busybox-static"
            )

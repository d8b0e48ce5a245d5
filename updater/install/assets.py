"""What the installer puts on a disk besides the release, read from its assets directory.

``[install] assets`` (default ``/usr/share/updater/install``; the image builder fills it):

- ``grub/BOOTX64.EFI`` (``BOOTAA64.EFI`` on arm64) and ``grub/grub.cfg``: GRUB for the ESP's
  removable-media path, built by the image builder with the modules ``grub/grub.cfg`` needs;
- ``root/``: the initial contents of ROOT (the writable ``/``; absent: ROOT starts empty);
- ``oem/ID/``: the files of the OEM partition for ``--oem ID`` (``--oem-dir DIR`` names a
  directory instead). Its ``grub.cfg`` is read as data (``cmdline.parse_oem_grub_cfg``) and
  must set ``oem_id`` to ID; without one, a ``grub.cfg`` that sets only ``oem_id`` is written.

Every file is bounded and checked before the disk is touched: the EFI binary must be a PE image
for this architecture, the OEM files plain files and directories only. The release's kernel,
initrd and USR image do not come from here (``updater.deploy``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from updater import cmdline
from updater.errors import DataError, UpdaterError, UsageError
from updater.records import dataclass

DEFAULT_ASSETS = "/usr/share/updater/install"
MAX_BOOT_LOADER = 64 << 20
MAX_GRUB_CFG = 256 << 10
MAX_OEM_FILES = 256
MAX_OEM_BYTES = 64 << 20
# PE/COFF machine types (Microsoft PE format, "Machine Types") and the removable-media file
# names of the UEFI specification (3.5.1.1).
EFI_BINARY = {"x86_64": ("BOOTX64.EFI", 0x8664), "arm64": ("BOOTAA64.EFI", 0xAA64)}
_OEM_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class OemFiles:
    oem_id: str
    files: tuple[tuple[str, bytes], ...]  # relative path -> contents; directories implied


@dataclass(frozen=True)
class Assets:
    boot_loader_name: str  # BOOTX64.EFI
    boot_loader: bytes
    grub_cfg: bytes
    root: str | None  # directory whose contents become ROOT
    oem: OemFiles | None


def load(directory: str, arch: str, oem_id: str | None, oem_dir: str | None) -> Assets:
    if arch not in EFI_BINARY:
        raise UsageError(f"no EFI boot loader name for architecture {arch}")
    name, machine = EFI_BINARY[arch]
    grub = Path(directory, "grub")
    loader = _read(grub / name, MAX_BOOT_LOADER)
    check_pe(loader, machine, str(grub / name))
    grub_cfg = _read(grub / "grub.cfg", MAX_GRUB_CFG)
    root = Path(directory, "root")
    oem = None
    if oem_id is not None or oem_dir is not None:
        oem = load_oem(oem_id, oem_dir, directory)
    return Assets(name, loader, grub_cfg, str(root) if _is_dir(root) else None, oem)


def check_pe(data: bytes, machine: int, what: str) -> None:
    """An EFI application is a PE32+ image: "MZ", the PE header where e_lfanew points, and the
    machine type of this architecture."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise DataError(f"{what} is not an EFI binary (no MZ header)")
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if pe + 6 > len(data) or data[pe : pe + 4] != b"PE\0\0":
        raise DataError(f"{what} is not an EFI binary (no PE header)")
    found = int.from_bytes(data[pe + 4 : pe + 6], "little")
    if found != machine:
        raise DataError(f"{what} is built for machine type {found:#x}, not {machine:#x}")


def load_oem(oem_id: str | None, oem_dir: str | None, assets: str) -> OemFiles:
    if oem_id is not None and not _OEM_ID.fullmatch(oem_id):
        raise UsageError(
            f"OEM id {oem_id!r}: 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    source = Path(oem_dir) if oem_dir is not None else Path(assets, "oem", str(oem_id))
    files = dict(_tree(source)) if oem_dir is not None or _is_dir(source) else {}
    cfg = files.get("grub.cfg")
    if cfg is None:
        if oem_id is None:
            raise DataError(f"{source}/grub.cfg is missing: it names the OEM id")
        files["grub.cfg"] = f'set oem_id="{oem_id}"\n'.encode()
        return OemFiles(oem_id, tuple(sorted(files.items())))
    try:
        found = cmdline.parse_oem_grub_cfg(cfg.decode("utf-8")).oem_id
    except (UnicodeDecodeError, UpdaterError) as exc:
        detail = exc.message if isinstance(exc, UpdaterError) else "not UTF-8"
        raise DataError(f"{source}/grub.cfg: {detail}") from None
    if not found or (oem_id is not None and found != oem_id):
        raise DataError(f"{source}/grub.cfg sets oem_id {found!r}, not {oem_id!r}")
    return OemFiles(found, tuple(sorted(files.items())))


def _tree(root: Path) -> list[tuple[str, bytes]]:
    """Regular files below ``root`` (directories followed, nothing else allowed), bounded."""
    if not _is_dir(root):
        raise DataError(f"{root} is not a directory")
    found: list[tuple[str, bytes]] = []
    total = 0
    for base, dirs, names in os.walk(root):
        for name in sorted(dirs) + sorted(names):
            path = Path(base, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise DataError(f"{path}: only regular files and directories go on the OEM")
            data = _read(path, MAX_OEM_BYTES - total)
            total += len(data)
            found.append((str(path.relative_to(root)), data))
            if len(found) > MAX_OEM_FILES:
                raise DataError(f"{root} holds more than {MAX_OEM_FILES} files")
    return found


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise DataError(f"{path} is larger than {limit} bytes")
    return data

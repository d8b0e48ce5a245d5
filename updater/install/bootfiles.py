"""The files of a fresh ESP, as plain values: GRUB at the removable-media path with the
project's ``grub.cfg``, the grubenv rendered from the new partition table, and the first-boot
marker. The image builder's test disk and the installer make their ESPs from this one place,
so that an installed disk boots exactly as the test disk does.

Pure: names and bytes. The slot kernels and initrds are written by ``updater.deploy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from updater import cmdline, grubenv
from updater.espenv import COPIES
from updater.slots import Slot

BOOT_DIR = "EFI/BOOT"  # the removable-media path: firmware finds it without a boot entry
GRUB_CFG = f"{BOOT_DIR}/grub.cfg"  # grub-mkimage -p /EFI/BOOT: GRUB reads it from there
FIRST_BOOT = cmdline.FIRST_BOOT_MARKERS[0]
DIRECTORIES = ("EFI", BOOT_DIR, "flatcar")


def grubenv_files(
    slots: Sequence[Slot], hashes: Mapping[str, str], panic: int
) -> dict[str, bytes]:
    """The A/B state for stock GRUB, rendered from ``slots`` as every later change renders it:
    both copies (``updater.espenv``) the same, sequence 1."""
    values = grubenv.slot_vars(slots, hashes)
    values[grubenv.PANIC_KEY] = str(panic)
    block = grubenv.render_copy(values, 1)
    return {name: block for name in COPIES}


def fresh_esp(
    loader_name: str,
    loader: bytes,
    grub_cfg: bytes,
    slots: Sequence[Slot],
    hashes: Mapping[str, str],
    panic: int,
) -> dict[str, bytes]:
    """Every file, in the order to write them: the boot loader last, so that a firmware that
    found the ESP half written would find nothing to start. ``panic``: the [boot] setting the
    grubenv carries to GRUB's ``panic=``."""
    files = {GRUB_CFG: grub_cfg, **grubenv_files(slots, hashes, panic), FIRST_BOOT: b""}
    files[f"{BOOT_DIR}/{loader_name}"] = loader
    return files

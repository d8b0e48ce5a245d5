"""The files a slot boots from on the ESP: its kernel (with the verity root hash inside), its
initrd, and the first-boot marker; with them, the OEM partition's grub.cfg that GRUB sources.

Knows the names (``updater.cmdline`` lists them, as Flatcar's grub.cfg does) and reads them
through a ``BootFiles``, each file once (the partition backends cache what they read). It does
not parse the files beyond the root hash, and it does not write anything.
"""

from __future__ import annotations

from updater import bootfs, cmdline
from updater.records import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from updater.bootfs import BootFiles

OEM_CONFIG = "grub.cfg"  # on the OEM partition, sourced by the ESP's grub.cfg


@dataclass(frozen=True)
class SlotFiles:
    """What GRUB would read from the ESP to boot one slot."""

    kernel: str | None  # ESP-relative path, None when the slot has no kernel here
    kernel_data: bytes = field(repr=False)
    initrd: str | None  # ESP-relative path of a separate initrd, when the image ships one
    initrd_data: bytes = field(repr=False)
    first_boot: bool
    oem_config: bytes | None = field(repr=False, default=None)  # the OEM grub.cfg, when read
    # False: ``kernel_data`` is the kernel's head (up to its root hash) and ``initrd_data`` is
    # empty; enough to plan a boot, never enough to load one
    whole: bool = True


def slot_files(
    files: BootFiles, letter: str, oem: BootFiles | None = None, *, whole: bool = True
) -> SlotFiles:
    """The slot's kernel, initrd and the first-boot marker, and the OEM partition's grub.cfg
    when ``oem`` is given: read in one go (``bootfs.read_first``), each file once. Without
    ``whole``, of the kernel only the bytes up to its root hash are read and of the initrd
    only that it is there (a dry run: tens of megabytes less to read)."""
    kernels: BootFiles = files if whole else bootfs.Heads(files, cmdline.USRHASH_END)
    initrds: BootFiles = files if whole else bootfs.Heads(files, 0)
    k, i, marker, cfg = bootfs.read_first([
        (kernels, cmdline.kernel_candidates(letter)),
        (initrds, cmdline.initrd_candidates(letter)),
        (files, cmdline.FIRST_BOOT_MARKERS),
        (oem, (OEM_CONFIG,)),
    ])  # fmt: skip
    return SlotFiles(
        k[0] if k else None, k[1] if k else b"", i[0] if i else None, i[1] if i else b"",
        marker is not None, cfg[1] if cfg else None, whole,
    )  # fmt: skip


def kernel(files: BootFiles, letter: str) -> tuple[str, bytes] | None:
    """The slot's kernel: ``flatcar/vmlinuz-a`` for USR-A, ``-b`` otherwise (``coreos/``
    on older images)."""
    (found,) = bootfs.read_first([(files, cmdline.kernel_candidates(letter))])
    return found


def usrhash(files: BootFiles, letter: str, arch: str) -> str | None:
    """The verity root hash stored in the slot's kernel for ``arch``, or None."""
    found = kernel(files, letter)
    return cmdline.usrhash_from_kernel(found[1], arch) if found else None

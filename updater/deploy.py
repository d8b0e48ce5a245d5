"""Put a verified release into one slot: its USR image through the slot writer, then its kernel
and initrd onto the ESP. Shared by ``updater update`` (the inactive slot of a running machine)
and ``updater install`` (the slots of a blank disk).

Order, each step durable before the next:
1. the USR image is streamed into the slot and read back against the signed verity root hash
   (``updater.slotwrite``; it refuses the booted slot and resumes an interrupted write);
2. the kernel and the initrd are fetched, checked against their signed lengths and hashes, and
   the kernel must carry the image's root hash (GRUB and ``updater kexec`` take the hash from
   the kernel: a kernel naming another hash would boot nothing, or the wrong image);
3. both are written to the ESP under the slot's names (``flatcar/vmlinuz-a|b``,
   ``flatcar/initrd-a|b``) through ``BootFiles.write``, which replaces a file atomically.

This module changes no A/B state: the caller makes the slot unbootable before (so that a cut in
the middle never leaves a half-written slot that GRUB could pick) and activates it after. It
does not choose the release and does not reboot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from updater import cmdline
from updater.errors import VerificationError
from updater.records import dataclass
from updater.release import Release
from updater.slotwrite import ImageFacts, Phase, Region, WriteResult, write_image

if TYPE_CHECKING:
    from updater.bootfs import BootFiles
    from updater.fetch.client import ReleaseClient

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: phase ``write`` (uncompressed bytes into the slot),
``verify`` (bytes read back), ``boot-files`` (kernel and initrd bytes onto the ESP)."""


@dataclass(frozen=True)
class SlotDestination:
    letter: str  # "A" or "B": names the slot's kernel and initrd on the ESP
    region: Region  # the slot's partition node, or its byte range in a disk image file
    booted: Region | None  # the running system's slot (None on a disk nothing boots from)


@dataclass(frozen=True)
class Deployed:
    version: str
    letter: str
    root_hash: str
    write: WriteResult
    boot_files: tuple[str, ...]  # ESP-relative paths written


def image_facts(rel: Release) -> ImageFacts:
    """What the slot writer checks the stream against, from the signed release."""
    img = rel.image
    return ImageFacts(
        compressed_size=img.usr.length,
        sha256=img.usr.sha256,
        table=img.frames,
        root_hash=bytes.fromhex(img.verity.root_hash),
        hash_offset=img.verity.hash_offset,
    )


def boot_file_names(letter: str) -> tuple[str, str]:
    """Where the slot's kernel and initrd go on the ESP (the first, current-style names)."""
    return cmdline.kernel_candidates(letter)[0], cmdline.initrd_candidates(letter)[0]


def check_kernel(kernel: bytes, rel: Release, arch: str) -> None:
    """The kernel must carry exactly the image's root hash, where this architecture keeps it."""
    found = cmdline.usrhash_from_kernel(kernel, arch)
    wanted = rel.image.verity.root_hash
    if found != wanted:
        raise VerificationError(
            f"the kernel of release {rel.version} carries root hash {found or 'none'}, "
            f"its image has {wanted}"
        )


def deploy(
    client: ReleaseClient,
    rel: Release,
    dest: SlotDestination,
    esp: BootFiles,
    *,
    state_dir: str,
    arch: str,
    progress: Progress | None = None,
) -> Deployed:
    """Write ``rel`` into ``dest`` and its boot files onto ``esp`` (see the module doc)."""
    report = progress or (lambda phase, done, total: None)
    usr = client.target(rel.image.usr.path)
    if usr is None or usr.length != rel.image.usr.length:
        raise VerificationError(f"the repository no longer signs {rel.image.usr.path} as listed")
    written = write_image(
        client.source(usr),
        image_facts(rel),
        dest.region,
        booted=dest.booted,
        state_dir=state_dir,
        progress=lambda phase, done, total: report(str(phase), done, total),
    )
    kernel = fetch_target(client, rel.kernel.path)
    check_kernel(kernel, rel, arch)
    initrd = fetch_target(client, rel.initrd.path) if rel.initrd is not None else None
    kernel_name, initrd_name = boot_file_names(dest.letter)
    total = len(kernel) + (len(initrd) if initrd is not None else 0)
    # The initrd first: a kernel of the new release beside the old initrd could boot with
    # modules of another kernel; the other way round the old kernel is still whole.
    names: list[str] = []
    if initrd is not None:
        esp.write(initrd_name, initrd)
        names.append(initrd_name)
        report("boot-files", len(initrd), total)
    esp.write(kernel_name, kernel)
    names.append(kernel_name)
    report("boot-files", total, total)
    return Deployed(str(rel.version), dest.letter, rel.image.verity.root_hash, written,
                    tuple(names))  # fmt: skip


def fetch_target(client: ReleaseClient, path: str) -> bytes:
    """A signed target's bytes (length and hashes checked by the client)."""
    target = client.target(path)
    if target is None:
        raise VerificationError(f"the repository no longer signs {path}")
    return client.read(target)


__all__ = [
    "Deployed", "Phase", "SlotDestination", "boot_file_names", "deploy", "fetch_target",
    "image_facts",
]  # fmt: skip

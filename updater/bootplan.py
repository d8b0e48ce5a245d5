"""The plan of one boot: which slot, which kernel and initrd, which command line, as a value.

``plan_boot`` does in userspace what GRUB does before it jumps: choose the slot with GRUB's rule
(or the one asked for, roles included), read that slot's kernel and the verity root hash in it,
the first-boot marker and the OEM partition's grub.cfg, and build the command line. It reads
through the ``Target``'s ESP and OEM files and is otherwise pure. The kernel's bytes stay in
the plan, so the kernel that is loaded is the very one the root hash was read from.

``stage`` turns a plan into local files for kexec (which wants paths): the kernel's bytes and
the initrd go to a tmpfs directory under /run, with the facts cpio appended for initrd delivery.

What the plan leaves out is said in ``notes`` for the caller to log: an OEM grub.cfg that could
not be read as data (GRUB would still boot, so the boot goes on with Flatcar's defaults), an
OEM id that is not one safe word, words that would set a protected argument. This module does
not load kernels, consume tries or reboot (``updater.bootflow``).
"""

from __future__ import annotations

import os
import re

from updater import cmdline, espfiles, initrdcpio, kexec, slots
from updater.cmdline import BootFacts, Delivery, OemConfig
from updater.errors import DataError, DeviceError, NoBootableSlot, SlotError, VerificationError
from updater.records import dataclass, field, replace
from updater.state import DiskState
from updater.target import Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from updater.bootfs import BootFiles

MAX_OEM_CFG = 64 * 1024  # a real one is a few lines; anything larger is not read
_OEM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Staged:
    """Local paths kexec loads from, and the image it loads."""

    image: kexec.KexecImage  # kernel, initrd (the slot's, with the facts appended), cmdline
    initrd_base: str | None = None  # the copy of the slot's own initrd
    facts: str | None = None  # the facts cpio (initrd delivery)

    @property
    def kernel(self) -> str:
        return self.image.kernel

    @property
    def initrd_parts(self) -> list[str]:
        """The pieces of what kexec gets as its initrd, in order (the JSON contract's list)."""
        return [p for p in (self.initrd_base, self.facts) if p]


@dataclass(frozen=True)
class BootPlan:
    slot: slots.Slot
    kernel: str  # ESP-relative
    initrd: str | None  # ESP-relative, when the image ships a separate initrd
    facts: BootFacts
    delivery: Delivery
    cmdline: str
    kernel_data: bytes = field(repr=False, compare=False, default=b"")
    initrd_data: bytes = field(repr=False, compare=False, default=b"")
    notes: tuple[str, ...] = ()
    staged: Staged | None = None
    whole: bool = True  # False: planned from the kernel's head only; it can name paths, not copy

    def image(self) -> kexec.KexecImage:
        if self.staged is None:
            raise DeviceError("the boot plan is not staged")
        return self.staged.image


def pick_slot(st: DiskState, spec: str | None) -> slots.Slot:
    """GRUB's choice, or the slot asked for, which must be able to boot."""
    if spec in (None, "auto"):
        chosen = slots.choose_next(st.slots)
        if chosen is None:
            raise NoBootableSlot("no bootable slot (GRUB would stop with 'no such partition')")
        return chosen
    chosen = slots.resolve(st.slots, spec or "", st.booted)
    if not chosen.bootable:
        raise SlotError(
            f"{chosen.label} cannot boot (priority {chosen.priority}, tries {chosen.tries}, "
            f"successful {int(chosen.successful)})",
            hint="set-active it first",
        )
    return chosen


def plan_boot(
    st: DiskState, spec: str | None, target: Target, stage_dir: str | None = None,
    *, copy: bool = False,
) -> BootPlan:  # fmt: skip
    """The plan for ``spec`` (``auto``: GRUB's choice), staged in ``stage_dir`` when given
    (``stage``; ``copy=False`` only names the paths, and then the kernel is read only up to
    its root hash and the initrd not at all: the plan cannot be staged with copies later)."""
    plan = _plan(st, spec, target, whole=stage_dir is None or copy)
    return plan if stage_dir is None else stage(plan, stage_dir, copy=copy)


def _plan(st: DiskState, spec: str | None, target: Target, *, whole: bool) -> BootPlan:
    config = target.boot
    slot = pick_slot(st, spec)
    letter = slot.letter
    if letter is None:
        raise SlotError(
            f"partition {slot.partition} has no USR-<letter> label; cannot name its kernel"
        )
    esp = target.esp
    if esp is None:
        raise DeviceError(f"{target.disk}: no EFI-SYSTEM partition to boot from")
    files = espfiles.slot_files(esp, letter, target.oem, whole=whole)  # and the OEM grub.cfg
    if files.kernel is None:
        raise SlotError(
            f"no kernel for {slot.label} on {esp.description} "
            f"(looked for {', '.join(cmdline.kernel_candidates(letter))})"
        )
    usrhash = cmdline.usrhash_from_kernel(files.kernel_data, config.arch)
    if config.verity and usrhash is None:
        raise VerificationError(
            f"the kernel for {slot.label} carries no dm-verity root hash at its hash offset; "
            "refusing to boot an unverifiable /usr"
        )
    notes: list[str] = []
    oem = _oem_config(files.oem_config, target.oem, notes)
    extra = config.extra_args
    if config.reuse_cmdline:
        extra = cmdline.strip_slot_args(target.cmdline, config.drop_args) + extra
    facts = BootFacts(
        letter=letter,
        partuuid=slot.partuuid,
        usrhash=usrhash if config.verity else None,
        first_boot=files.first_boot,
        oem=oem,
        extra=extra,
        boot_image=f"/{files.kernel}",
        panic=config.panic,
    )
    dropped = cmdline.dropped_args(facts, config.delivery)
    if dropped:
        notes.append(
            "left out arguments that would set what the updater sets itself: " + " ".join(dropped)
        )
    line = cmdline.build_cmdline(facts, config.delivery)
    return BootPlan(
        slot, files.kernel, files.initrd, facts, config.delivery, line,
        kernel_data=files.kernel_data, initrd_data=files.initrd_data, notes=tuple(notes),
        whole=files.whole,
    )  # fmt: skip


def _oem_config(raw: bytes | None, oem: BootFiles | None, notes: list[str]) -> OemConfig:
    """The OEM settings from ``raw`` (the grub.cfg read from ``oem``), or Flatcar's defaults
    with a note when the file is not usable data: GRUB would have booted anyway, so a damaged
    OEM file never stops a reboot."""
    if raw is None:
        return OemConfig()
    where = oem.description if oem is not None else "the OEM partition"
    ignored = f"ignoring the OEM settings on {where}; booting with Flatcar's defaults"
    if len(raw) > MAX_OEM_CFG:
        notes.append(f"{ignored} (grub.cfg is {len(raw)} bytes, more than {MAX_OEM_CFG})")
        return OemConfig()
    try:
        parsed = cmdline.parse_oem_grub_cfg(raw.decode(errors="replace"))
    except DataError as exc:
        notes.append(f"{ignored} ({exc.message})")
        return OemConfig()
    if parsed.oem_id and not _OEM_ID.fullmatch(parsed.oem_id):
        notes.append(f"leaving out the OEM id {parsed.oem_id!r}: not one word of A-Z a-z 0-9 . _ -")
        parsed = replace(parsed, oem_id="")
    return parsed


def stage(plan: BootPlan, directory: str, *, copy: bool) -> BootPlan:
    """The plan with local paths for kexec, in ``directory`` (a tmpfs under /run), written from
    the bytes the plan read (the kernel whose root hash is on the command line, not whatever
    the ESP holds by now). With initrd delivery
    the facts cpio is appended to the initrd (the kernel unpacks concatenated archives).
    ``copy=False`` names the paths without writing anything (``--dry-run``)."""
    if copy and not plan.whole:
        raise ValueError("a plan made from the kernel's head cannot be staged: plan it whole")

    def local(rel: str) -> str:
        return os.path.join(directory, rel.replace("/", "_"))

    kernel = local(plan.kernel)
    initrd = initrd_base = local(plan.initrd) if plan.initrd else None
    facts_path = None
    if copy:
        os.makedirs(directory, exist_ok=True)
        _write(kernel, plan.kernel_data)
        if initrd_base:
            _write(initrd_base, plan.initrd_data)
    if plan.delivery is Delivery.INITRD:
        facts_path = os.path.join(directory, "boot-facts.cpio")
        initrd = os.path.join(directory, "initrd-with-facts")
        if copy:
            facts = initrdcpio.facts_initrd(plan.facts)
            _write(facts_path, facts)
            _write(initrd, initrdcpio.append_archive(plan.initrd_data, facts))
    image = kexec.KexecImage(kernel, initrd, plan.cmdline)
    return replace(plan, staged=Staged(image, initrd_base, facts_path))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)

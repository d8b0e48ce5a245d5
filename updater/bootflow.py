"""The boot path in userspace: what GRUB does, then kexec instead of the firmware.

1. choose the slot with GRUB's rule (or the one asked for), read what GRUB would read (the slot's
   kernel and its verity hash, the first-boot marker, the OEM grub.cfg) and build the command
   line (``plan_boot``, pure apart from the file reads it is handed);
2. unload any stale kernel, load the new one (``kexec_file_load``, else ``kexec_load`` where
   allowed);
3. consume the boot try durably in the GPT (and the grubenv) only now, after the load worked and
   right before the jump, so that a hung or broken new kernel falls back on the next cold boot
   through the firmware, and a failed load leaves the try for GRUB to consume;
4. jump: ``systemctl kexec`` (clean shutdown) or, with force, ``kexec -e``.
If kexec cannot work (lockdown, disabled, no tools, a failed load) the machine reboots through
the firmware instead, with one log line, and GRUB picks the same slot from the same state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updater import bootfs, cmdline, initrdcpio, kexec, slots, state
from updater.cmdline import BootFacts, Delivery
from updater.config import BootSettings
from updater.errors import NoBootableSlot, SlotError, VerificationError
from updater.run import run

STAGE_DIR = "/run/updater/kexec"


@dataclass(frozen=True)
class BootPlan:
    slot: slots.Slot
    kernel: str  # ESP-relative
    initrd: str | None  # ESP-relative, when the image ships a separate initrd
    facts: BootFacts
    delivery: Delivery
    cmdline: str
    stage: dict[str, str] = field(default_factory=dict)  # ESP-relative -> local path

    def image(self) -> kexec.KexecImage:
        initrd = self.stage.get("initrd")
        return kexec.KexecImage(self.stage["kernel"], initrd, self.cmdline)


def pick_slot(st: state.DiskState, spec: str | None) -> slots.Slot:
    """GRUB's choice, or the slot asked for, which must be able to boot."""
    if spec in (None, "auto"):
        chosen = st.next
        if chosen is None:
            raise NoBootableSlot("no bootable slot (GRUB would stop with 'no such partition')")
        return chosen
    chosen = slots.resolve(st.slots, spec or "")
    if not chosen.bootable:
        raise SlotError(
            f"{chosen.label} cannot boot (priority {chosen.priority}, tries {chosen.tries}, "
            f"successful {int(chosen.successful)})",
            hint="set-active it first",
        )
    return chosen


def plan_boot(
    st: state.DiskState,
    spec: str | None,
    esp: bootfs.BootFiles,
    oem: bootfs.BootFiles | None,
    config: BootSettings,
    running_cmdline: str,
) -> BootPlan:
    slot = pick_slot(st, spec)
    letter = slot.letter
    if letter is None:
        raise SlotError(
            f"partition {slot.partition} has no USR-<letter> label; cannot name its kernel"
        )
    kernel_rel, kernel = _first(esp, cmdline.kernel_candidates(letter))
    if kernel is None or kernel_rel is None:
        raise SlotError(
            f"no kernel for {slot.label} on {esp.description} "
            f"(looked for {', '.join(cmdline.kernel_candidates(letter))})"
        )
    usrhash = cmdline.usrhash_from_kernel(kernel, config.arch)
    if config.verity and usrhash is None:
        raise VerificationError(
            f"the kernel for {slot.label} carries no dm-verity root hash at its hash offset; "
            "refusing to boot an unverifiable /usr"
        )
    initrd_rel, _ = _first(esp, cmdline.initrd_candidates(letter))
    first_boot = any(esp.read(m) is not None for m in cmdline.FIRST_BOOT_MARKERS)
    oem_cfg = cmdline.OemConfig()
    if oem is not None:
        text = oem.read("grub.cfg")
        if text is not None:
            oem_cfg = cmdline.parse_oem_grub_cfg(text.decode(errors="replace"))
    extra = config.extra_args
    if config.reuse_cmdline:
        extra = cmdline.strip_slot_args(running_cmdline, config.drop_args) + extra
    facts = BootFacts(
        letter=letter,
        partuuid=slot.partuuid,
        usrhash=usrhash if config.verity else None,
        first_boot=first_boot,
        oem=oem_cfg,
        extra=extra,
        boot_image=f"/{kernel_rel}",
    )
    line = cmdline.build_cmdline(facts, config.delivery)
    return BootPlan(slot, kernel_rel, initrd_rel, facts, config.delivery, line)


def _first(files: bootfs.BootFiles, candidates: Sequence[str]) -> tuple[str | None, bytes | None]:
    for rel in candidates:
        data = files.read(rel)
        if data is not None:
            return rel, data
    return None, None


def stage(plan: BootPlan, esp: bootfs.BootFiles, directory: str, *, copy: bool) -> BootPlan:
    """Local paths for kexec. A mounted ESP is used in place; files from a partition are copied
    into ``directory`` (tmpfs under /run). With initrd delivery the facts cpio is appended to
    the initrd (the kernel unpacks concatenated archives)."""
    out: dict[str, str] = {}
    local = isinstance(esp, bootfs.DirFiles)
    if copy:
        Path(directory).mkdir(parents=True, exist_ok=True)

    def path_of(rel: str) -> str:
        if local or copy:  # a mounted ESP's own path, or the copy made now
            return esp.local_copy(rel, directory)
        return str(Path(directory, rel.replace("/", "_")))  # where the copy would go

    out["kernel"] = path_of(plan.kernel)
    if plan.initrd:
        out["initrd_base"] = path_of(plan.initrd)
        out["initrd"] = out["initrd_base"]
    if plan.delivery is Delivery.INITRD:
        facts = initrdcpio.facts_initrd(plan.facts)
        out["facts"] = str(Path(directory, "boot-facts.cpio"))
        out["initrd"] = str(Path(directory, "initrd-with-facts"))
        if copy:
            Path(out["facts"]).write_bytes(facts)
            base = Path(out["initrd_base"]).read_bytes() if plan.initrd else b""
            Path(out["initrd"]).write_bytes(initrdcpio.append_archive(base, facts))
    return BootPlan(plan.slot, plan.kernel, plan.initrd, plan.facts, plan.delivery,
                    plan.cmdline, out)  # fmt: skip


def plan_json(plan: BootPlan, commands: list[list[str]], method: str) -> dict[str, Any]:
    """The ``kexec --dry-run --json`` contract (README)."""
    parts = [p for k, p in plan.stage.items() if k in ("initrd_base", "facts")]
    if plan.stage.get("initrd") and not parts:
        parts = [plan.stage["initrd"]]
    return {
        "slot": plan.slot.letter,
        "partition": plan.slot.partition,
        "kernel": plan.stage.get("kernel"),
        "initrd": parts,
        "cmdline": plan.cmdline,
        "delivery": str(plan.delivery),
        "method": method,
        "commands": commands,
    }


def consume_try(expected: slots.Slot) -> Callable[[state.DiskState], slots.Transition]:
    """The decision for ``state.change``: consume a try of the planned slot, and refuse if the
    state moved under us (another tool changed it between planning and now)."""

    def decide(st: state.DiskState) -> slots.Transition:
        now = st.slot(expected.partition)
        if now.attributes != expected.attributes:
            raise SlotError(f"the A/B state of {now.label} changed while preparing the kexec")
        if now.tries > 0:
            return slots.Transition(
                "kexec",
                now.partition,
                {now.partition: slots.encode(now.attributes, tries=now.tries - 1)},
            )
        return slots.Transition("kexec", now.partition, {})

    return decide


def log(message: str) -> None:
    sys.stderr.write(f"updater: {message}\n")
    sys.stderr.flush()


def firmware_reboot(disk: str | None, booted: str | None, esp: str | None, force: bool,
                    support: kexec.KexecSupport) -> None:  # fmt: skip
    """Reboot through the firmware: refresh the grubenv from the GPT first, so stock GRUB picks
    exactly what the GPT says, and drop any loaded kexec kernel."""
    state.change(disk, booted, lambda st: slots.Transition("sync", None, {}), esp=esp)
    for argv in kexec.firmware_argvs(force=force, systemd=support.systemd):
        run(argv, check=argv[0] != "kexec")

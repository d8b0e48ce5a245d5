"""kexec decisions and the boot plan, without running anything."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from updater import bootflow, bootplan, contracts, gptformat, kexec, records, slots, state
from updater.cmdline import Delivery
from updater.config import BootSettings
from updater.errors import NoBootableSlot, SlotError, VerificationError
from updater.kexec import KexecImage, KexecSupport, Method
from updater.target import Target

from .memdisk import build, flatcar_parts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from updater.bootfs import BootFiles

OK = KexecSupport(tool=True, load_disabled=False, lockdown="none", systemd=True)
HASH_A = "0123456789abcdef" * 4
HASH_B = "fedcba9876543210" * 4


def test_load_argv_per_method() -> None:
    img = KexecImage("/run/k", "/run/i", "root=LABEL=ROOT quiet")
    assert img.load_argv(Method.FILE) == [
        "kexec",
        "-s",
        "-l",
        "/run/k",
        "--initrd=/run/i",
        "--append=root=LABEL=ROOT quiet",
    ]
    assert KexecImage("/k", None, "x").load_argv(Method.LOAD) == [
        "kexec",
        "-c",
        "-l",
        "/k",
        "--append=x",
    ]
    assert all("--reuse-cmdline" not in a for a in img.load_argv(Method.FILE))


@pytest.mark.parametrize(
    ("support", "blocker"),
    [
        (OK, None),
        (KexecSupport(False, False, "none", True), "kexec-tools is not installed"),
        (KexecSupport(True, True, "none", True), "kernel.kexec_load_disabled=1"),
    ],
)
def test_blockers(support: KexecSupport, blocker: str | None) -> None:
    assert support.blocker() == blocker
    assert kexec.first_method(support) is (Method.FIRMWARE if blocker else Method.FILE)


@pytest.mark.parametrize(
    ("lockdown", "cause", "expected"),
    [
        ("none", "ENOSYS", Method.LOAD),  # old kernel without kexec_file_load
        ("integrity", "ENOSYS", Method.FIRMWARE),  # lockdown forbids kexec_load
        ("confidentiality", "ENOSYS", Method.FIRMWARE),
        ("none", "EPERM", Method.FIRMWARE),
        ("none", "EBUSY", Method.FIRMWARE),
        ("none", "EKEYREJECTED", Method.FIRMWARE),  # unsigned kernel under lockdown
        ("none", "unknown", Method.FIRMWARE),
    ],
)
def test_fallback_after_file_load_failure(lockdown: str, cause: str, expected: Method) -> None:
    support = KexecSupport(True, False, lockdown, True)
    assert kexec.next_method(support, Method.FILE, cause) is expected
    assert kexec.next_method(support, Method.LOAD, cause) is Method.FIRMWARE


@pytest.mark.parametrize(
    ("stderr", "cause"),
    [
        ("kexec_file_load failed: Operation not permitted\n", "EPERM"),
        ("syscall kexec_file_load not available: Function not implemented", "ENOSYS"),
        ("kexec_load failed: Device or resource busy", "EBUSY"),
        ("kexec_file_load failed: Key was rejected by service", "EKEYREJECTED"),
        ("something else", "unknown"),
    ],
)
def test_classify(stderr: str, cause: str) -> None:
    assert kexec.classify(stderr) == cause


def test_exec_and_firmware_commands() -> None:
    def exec_argvs(**kw: bool) -> list[list[str]]:
        return kexec.argvs(kexec.exec_steps(**kw))

    assert exec_argvs(force=False, systemd=True) == [["systemctl", "kexec"]]
    assert exec_argvs(force=True, systemd=True)[-1] == ["kexec", "-e"]
    assert exec_argvs(force=False, systemd=False)[0] == ["sync"]
    fw = kexec.argvs(kexec.firmware_steps(force=False, systemd=True))
    assert fw[0] == ["kexec", "-u"] and fw[-1] == ["systemctl", "reboot"]  # stale kernel dropped


def test_probe_support_reads_proc_and_sys(tmp_path: Path) -> None:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "1").mkdir()
    (sys / "kernel/security").mkdir(parents=True)
    (proc / "sys/kernel/kexec_load_disabled").write_text("1\n")
    (proc / "1/comm").write_text("init\n")
    (sys / "kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    s = kexec.probe_support(str(proc), str(sys))
    assert (s.load_disabled, s.lockdown, s.systemd) == (True, "integrity", False)


# --- the plan --------------------------------------------------------------------------------


class MemFiles:
    description = "memory"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[str] = []

    def read(self, rel: str) -> bytes | None:
        self.reads.append(rel)
        return self.files.get(rel)

    def head(self, rel: str, length: int) -> bytes | None:
        self.reads.append(f"{rel}[:{length}]")
        data = self.files.get(rel)
        return None if data is None else data[:length]

    def write(self, rel: str, data: bytes) -> None:
        self.files[rel] = data


def kernel(h: str | None) -> bytes:
    data = bytearray(4096)
    if h:
        data[0x40 : 0x40 + 64] = h.encode()
    return bytes(data)


def disk_state(a: tuple[int, int, bool], b: tuple[int, int, bool]) -> state.DiskState:
    enc = [slots.encode(0, priority=p, tries=t, successful=s) for p, t, s in (a, b)]
    table = gptformat.read_table(build(flatcar_parts(enc[0], enc[1])))
    found = slots.slots_of(table.entries())
    return state.DiskState("disk.img", table, found, 3)


def target(
    esp: BootFiles, oem: BootFiles | None = None, settings: BootSettings | None = None,
    running: str = "",
) -> Target:  # fmt: skip
    """The Target these plans are made for: an image file booted from USR-A."""
    return Target("disk.img", 3, esp, oem, running, settings or BootSettings())


def esp(**extra: bytes) -> MemFiles:
    files = {
        "flatcar/vmlinuz-a": kernel(HASH_A),
        "flatcar/vmlinuz-b": kernel(HASH_B),
        "flatcar/initrd-a": b"I",
        "flatcar/initrd-b": b"I",
    }
    files.update({k.replace("__", "/"): v for k, v in extra.items()})
    return MemFiles(files)


def test_plan_follows_grub_choice_and_builds_flatcar_cmdline() -> None:
    st = disk_state((1, 0, True), (2, 1, False))
    oem = MemFiles({"grub.cfg": b'set oem_id="qemu"\nset linux_append="x=1"\n'})
    plan = bootplan.plan_boot(st, None, target(esp(flatcar__first_boot=b""), oem))
    assert plan.slot.partition == 4 and plan.kernel == "flatcar/vmlinuz-b"
    assert plan.initrd == "flatcar/initrd-b"
    words = plan.cmdline.split()
    assert f"verity.usr=PARTUUID={plan.slot.partuuid}" in words
    assert words[-1] == f"verity.usrhash={HASH_B}"
    assert {"flatcar.first_boot=detected", "flatcar.oem.id=qemu", "x=1"} <= set(words)


def test_plan_refuses_kernel_without_hash_and_unbootable_slots() -> None:
    st = disk_state((1, 0, True), (2, 1, False))
    files = esp()
    files.files["flatcar/vmlinuz-b"] = kernel(None)
    with pytest.raises(VerificationError, match="no dm-verity root hash"):
        bootplan.plan_boot(st, None, target(files))
    with pytest.raises(SlotError, match="cannot boot"):
        bootplan.plan_boot(disk_state((1, 0, True), (0, 0, False)), "B", target(esp()))
    with pytest.raises(NoBootableSlot):
        bootplan.plan_boot(disk_state((0, 0, True), (0, 0, False)), None, target(esp()))


def test_plan_reuses_running_cmdline_without_slot_args() -> None:
    st = disk_state((1, 0, True), (0, 0, False))
    running = (
        "BOOT_IMAGE=/flatcar/vmlinuz-b mount.usr=/dev/mapper/usr "
        f"verity.usr=PARTUUID={uuid.uuid4()} root=LABEL=ROOT quiet custom=1 verity.usrhash={HASH_B}"
    )
    cfg = BootSettings(reuse_cmdline=True)
    plan = bootplan.plan_boot(st, None, target(esp(), settings=cfg, running=running))
    words = plan.cmdline.split()
    assert "custom=1" in words and "quiet" not in words
    assert words.count("root=LABEL=ROOT") == 1
    assert f"verity.usrhash={HASH_A}" in words and f"verity.usrhash={HASH_B}" not in words


def test_stage_initrd_delivery_appends_facts_archive() -> None:
    st = disk_state((1, 0, True), (0, 0, False))
    cfg = BootSettings(delivery=Delivery.INITRD)
    plan = bootplan.stage(
        bootplan.plan_boot(st, "A", target(esp(), settings=cfg)), "/run/x", copy=False
    )
    assert "verity.usrhash" not in plan.cmdline and "PARTUUID" not in plan.cmdline
    assert plan.image().initrd == "/run/x/initrd-with-facts"
    doc = contracts.reboot(bootflow.Report(Method.FILE, (), plan.slot, plan))
    assert doc["initrd"] == ["/run/x/flatcar_initrd-a", "/run/x/boot-facts.cpio"]
    assert doc["slot"] == "A" and doc["partition"] == 3


@pytest.mark.parametrize("delivery", list(Delivery))
def test_a_plan_that_copies_nothing_reads_the_kernels_head_only(delivery: Delivery) -> None:
    """A dry run plans from the kernel's first bytes (its root hash is at 0x40 on x86_64, 512
    on arm64) and only asks whether the initrd exists; the plan is the same as a whole read's,
    and it cannot be staged with copies (the staged kernel must be the one the hash came from)."""
    st = disk_state((1, 0, True), (0, 0, False))
    cfg = BootSettings(delivery=delivery)
    dry_esp, whole_esp = esp(), esp()
    dry = bootplan.plan_boot(st, "A", target(dry_esp, settings=cfg), "/run/x", copy=False)
    whole = bootplan.plan_boot(st, "A", target(whole_esp, settings=cfg))
    assert not dry.whole and whole.whole
    assert dry == records.replace(whole, staged=dry.staged, whole=False)
    assert dry.cmdline == whole.cmdline
    assert dry.kernel_data == kernel(HASH_A)[: 512 + 64] and dry.initrd_data == b""
    assert whole.kernel_data == kernel(HASH_A) and whole.initrd_data == b"I"
    assert {"flatcar/vmlinuz-a[:576]", "flatcar/initrd-a[:0]"} <= set(dry_esp.reads)
    assert not {"flatcar/vmlinuz-a", "flatcar/initrd-a"} & set(dry_esp.reads)
    assert {"flatcar/vmlinuz-a", "flatcar/initrd-a"} <= set(whole_esp.reads)
    with pytest.raises(ValueError, match="cannot be staged"):
        bootplan.stage(dry, "/run/x", copy=True)
    assert dry.image() == bootplan.stage(whole, "/run/x", copy=False).image()

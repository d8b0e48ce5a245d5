"""Resolving the Target: the booted /usr from what is mounted (sysfs), the command line as a
fallback and a cross-check, and the one rule for the ESP and OEM."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from updater import bootdisk, bootfs, slots, state, target
from updater.errors import DeviceError, SlotError, UsageError
from updater.guid import Guid
from updater.layout import USR_A_UUID, USR_B_UUID

from .memdisk import image_file

GOOD = slots.encode(0, priority=1, tries=0, successful=True)
TRIAL = slots.encode(0, priority=2, tries=0, successful=False)
INITRD_CMDLINE = "rootflags=rw mount.usrflags=ro root=LABEL=ROOT mount.usr=/dev/mapper/usr\n"


def machine(tmp: Path, cmdline: str, usr_partition: int | None = 4) -> dict[str, Any]:
    """A fake /proc, /sys and /dev: /usr is dm-0 (dm-verity) over vda<usr_partition>, and
    /dev/vda is a disk image file."""
    proc, sys, dev = tmp / "proc", tmp / "sys", tmp / "dev"
    (proc / "self").mkdir(parents=True)
    (proc / "cmdline").write_text(cmdline)
    mounts = "22 1 254:1 / / rw - ext4 /dev/vda9 rw\n"
    if usr_partition is not None:
        mounts += "36 22 252:0 / /usr ro,relatime - squashfs /dev/mapper/usr ro\n"
    (proc / "self" / "mountinfo").write_text(mounts)
    disk_dir = sys / "devices" / "pci0000:00" / "virtio2" / "block" / "vda"
    for n in (3, 4, 9):
        (disk_dir / f"vda{n}").mkdir(parents=True)
        (disk_dir / f"vda{n}" / "partition").write_text(f"{n}\n")
    dm = sys / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    if usr_partition is not None:
        (dm / "slaves" / f"vda{usr_partition}").symlink_to(disk_dir / f"vda{usr_partition}")
    (sys / "dev" / "block").mkdir(parents=True)
    (sys / "dev" / "block" / "252:0").symlink_to(dm)
    (sys / "dev" / "block" / "254:9").symlink_to(disk_dir / "vda9")
    dev.mkdir()
    image_file(dev / "vda", GOOD, TRIAL)
    (tmp / "esp").mkdir()
    return {"proc": str(proc), "sys": str(sys), "dev": str(dev), "esp": str(tmp / "esp")}


def test_mountinfo_usr_device() -> None:
    text = (
        "22 1 254:1 / / rw - ext4 /dev/vda9 rw\n"
        "36 22 252:0 / /usr ro - squashfs /dev/mapper/usr ro\n"
        "37 22 0:5 / /usr/share/x rw - tmpfs tmpfs rw\n"
    )
    assert bootdisk.usr_device(text) == "252:0"
    assert bootdisk.usr_device("22 1 254:1 / / rw - ext4 /dev/vda9 rw\n") is None


def test_booted_slot_found_from_the_mounted_usr_after_initrd_delivery(tmp_path: Path) -> None:
    """After a kexec with the boot facts in the initrd the command line names no partition;
    the booted slot is the partition below the mounted /usr (dm-verity's slave)."""
    paths = machine(tmp_path, INITRD_CMDLINE)
    assert bootdisk.usr_partuuid(INITRD_CMDLINE) is None
    t = target.resolve(**paths)
    assert t.disk == paths["dev"] + "/vda" and t.booted == 4
    assert t.cmdline == INITRD_CMDLINE
    st = state.load(t)
    assert st.booted == 4 and st.resolve("booted").label == "USR-B"
    assert st.resolve("other").label == "USR-A"


def test_command_line_cross_checks_the_mounted_usr(tmp_path: Path) -> None:
    paths = machine(tmp_path, f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={USR_B_UUID}")
    assert target.resolve(**paths).booted == 4
    bad = tmp_path / "other"
    bad.mkdir()
    paths = machine(bad, f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={USR_A_UUID}")
    with pytest.raises(DeviceError, match="command line names PARTUUID 7130c94a"):
        target.resolve(**paths)


def test_command_line_is_the_fallback_without_a_usr_mount(tmp_path: Path) -> None:
    paths = machine(tmp_path, f"verity.usr=PARTUUID={USR_A_UUID}", usr_partition=None)
    link = Path(paths["dev"], "disk", "by-partuuid", str(USR_A_UUID))
    link.parent.mkdir(parents=True)
    block = Path(paths["sys"], "class", "block")
    block.mkdir(parents=True)
    disk_dir = Path(paths["sys"], "devices", "pci0000:00", "virtio2", "block", "vda")
    (block / "vda3").symlink_to(disk_dir / "vda3")
    (Path(paths["dev"]) / "vda3").write_bytes(b"")
    link.symlink_to(Path(paths["dev"]) / "vda3")
    t = target.resolve(**paths)
    assert (t.disk, t.booted) == (paths["dev"] + "/vda", 3)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    paths = machine(nothing, INITRD_CMDLINE, usr_partition=None)
    with pytest.raises(DeviceError, match="cannot tell which disk"):
        target.resolve(**paths)


def test_booted_given_and_image_files(tmp_path: Path) -> None:
    paths = machine(tmp_path, INITRD_CMDLINE)
    image = image_file(tmp_path / "disk.img", GOOD, TRIAL)
    t = target.resolve(str(image), **paths)
    assert t.booted is None  # the running /usr is not on this image
    assert target.resolve(str(image), "B", **paths).booted == 4
    same = target.resolve(paths["dev"] + "/vda", **paths)
    assert same.booted == 4  # the running disk named explicitly: still the mounted /usr
    with pytest.raises(UsageError, match="--booted other names no slot"):
        target.resolve(str(image), "other", **paths)


def test_one_rule_for_esp_and_oem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolving reads the ESP's grubenv copies; in place that is mtools (integration tier).
    monkeypatch.setattr(bootfs.FatPartitionFiles, "read", lambda self, rel: None)
    paths = machine(tmp_path, INITRD_CMDLINE)
    image = image_file(tmp_path / "disk.img", GOOD)
    given = target.resolve(str(image), "A", **paths)
    assert isinstance(given.esp, bootfs.DirFiles) and given.esp.root == paths["esp"]
    assert given.oem is None  # this image has no OEM partition
    own = target.resolve(str(image), "A", proc=paths["proc"], sys=paths["sys"], dev=paths["dev"])
    assert isinstance(own.esp, bootfs.FatPartitionFiles)  # read in place, nothing mounted
    assert own.esp.image.startswith(f"{image}@@")
    assert bootdisk.same_disk(str(image), os.path.realpath(image))


def test_the_update_flow_makes_the_other_slot_unbootable_through_state(tmp_path: Path) -> None:
    """What the update flow does before it writes a slot: the pure transition through the
    Target, the booted slot refused."""
    paths = machine(tmp_path, INITRD_CMDLINE)
    t = target.resolve(**paths)  # booted: B (partition 4), on trial with its try spent
    with pytest.raises(SlotError, match="no other slot could boot"):
        state.change(t, state.by_slots(slots.make_unbootable, 3, booted=t.booted))
    state.change(t, state.by_slots(slots.mark_good, 4))  # B proved itself
    outcome = state.change(t, state.by_slots(slots.make_unbootable, 3, booted=t.booted))
    a = state.load(t).slot(3)
    assert (a.priority, a.tries, a.successful) == (0, 0, False)
    assert outcome.sectors_written > 0
    with pytest.raises(SlotError, match="booted slot"):
        state.change(t, state.by_slots(slots.make_unbootable, 4, booted=t.booted, force=True))


def test_the_target_keeps_what_it_read_until_it_changes_the_disk(tmp_path: Path) -> None:
    """``as_resolved`` is the state the Target read while resolving (no second read of the
    disk) until a change goes through the same Target: then it reads again, so a flow handed
    that Target (``update --reboot``: activate, then reboot) plans from what it wrote."""
    paths = machine(tmp_path, INITRD_CMDLINE)
    t = target.resolve(**paths)
    assert t.snapshot is not None and state.as_resolved(t) == state.load(t)
    state.change(t, state.by_slots(slots.mark_good, 4))
    assert state.load(t).slot(4).successful
    assert state.as_resolved(t).slot(4).successful
    assert state.as_resolved(target.resolve(**paths)).slot(4).successful


def test_as_resolved_follows_every_change_through_the_target(tmp_path: Path) -> None:
    """The family of the stale-snapshot defect: after any sequence of changes through a
    resolved Target, what the reboot flow plans from equals a fresh read."""
    paths = machine(tmp_path, INITRD_CMDLINE)
    t = target.resolve(**paths)
    steps = [
        state.by_slots(slots.mark_good, 4),
        state.by_slots(slots.set_active, 3, booted=4),
        lambda st: slots.consume_try(st.slots, st.slot(3)),
        state.by_slots(slots.prioritize_transition, 4),
    ]
    for decide in steps:
        state.change(t, decide)
        assert state.as_resolved(t) == state.load(t)
        assert state.as_resolved(t).next == state.load(t).next


def test_a_partuuid_on_the_command_line_must_be_a_uuid_as_the_kernel_writes_it() -> None:
    """The kernel finds PARTUUID= by its own text; what only int(text, 16) would read (a sign,
    underscores, spaces, other scripts' digits) names no partition, and neither does junk."""
    good = "7130c94a-213a-4e5a-8e26-6cce9662f132"
    assert bootdisk.usr_partuuid(f"root=LABEL=ROOT mount.usr=PARTUUID={good.upper()}") == Guid(good)
    assert bootdisk.usr_partuuid(f"verity.usr=PARTUUID={good} usr=/dev/vda3") == Guid(good)
    for bad in ("+" + good[1:], good.replace("-", "_"), "\u0663" + good[1:], "not-a-uuid", ""):
        assert bootdisk.usr_partuuid(f"mount.usr=PARTUUID={bad}") is None, bad

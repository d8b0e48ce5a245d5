"""GPT parsing, copy selection, write plans and crash safety, on in-memory disks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from updater import gptformat, slots
from updater.errors import GptError
from updater.state import slots_of

from .memdisk import MemDisk, build, flatcar_parts, region_lba

A_GOOD = slots.encode(0, priority=1, tries=0, successful=True)
FOREIGN = (1 << 0) | (1 << 2) | (1 << 57) | (1 << 60) | (1 << 63) | (0xABCD << 16)


def state_of(disk: MemDisk) -> list[tuple[int, int]]:
    t = gptformat.read_table(disk)
    return [(s.partition, s.attributes) for s in slots_of(t.entries())]


def corrupt(disk: MemDisk, where: str) -> None:
    lba = region_lba(gptformat.read_table(disk), where)
    # byte 20: inside the header's fields, or the first entry's type GUID
    disk.data[lba * disk.sector_size + 20] ^= 0xFF


@pytest.mark.parametrize("ss", [512, 4096])
def test_reads_what_was_built(ss: int) -> None:
    disk = build(flatcar_parts(A_GOOD | FOREIGN), sector_size=ss)
    t = gptformat.read_table(disk)
    assert t.source == "primary" and not t.needs_repair
    used = t.used_entries()
    assert [e.name for e in used] == ["EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B"]
    assert used[2].attributes == A_GOOD | FOREIGN
    assert [s.label for s in slots_of(t.entries())] == ["USR-A", "USR-B"]


@pytest.mark.parametrize("where", ["primary-header", "primary-entries"])
def test_bad_primary_reads_backup(where: str) -> None:
    disk = build(flatcar_parts(A_GOOD))
    before = state_of(disk)
    corrupt(disk, where)
    t = gptformat.read_table(disk)
    assert t.source == "backup" and t.needs_repair
    assert state_of(disk) == before


@pytest.mark.parametrize("where", ["backup-header", "backup-entries"])
def test_bad_backup_reads_primary(where: str) -> None:
    disk = build(flatcar_parts(A_GOOD))
    corrupt(disk, where)
    t = gptformat.read_table(disk)
    assert t.source == "primary" and not t.backup.valid


def test_both_bad_is_an_error() -> None:
    disk = build(flatcar_parts(A_GOOD))
    corrupt(disk, "primary-header")
    corrupt(disk, "backup-entries")
    with pytest.raises(GptError, match="both GPT copies are invalid"):
        gptformat.read_table(disk)


def test_no_protective_mbr_is_an_error() -> None:
    disk = build(flatcar_parts(A_GOOD))
    disk.data[510] = 0
    with pytest.raises(GptError, match="protective MBR"):
        gptformat.read_table(disk)


@pytest.mark.parametrize(
    "where", [None, "primary-header", "primary-entries", "backup-header", "backup-entries"]
)
@pytest.mark.parametrize("ss", [512, 4096])
def test_write_repairs_and_changes_only_attribute_bytes(where: str | None, ss: int) -> None:
    disk = build(flatcar_parts(A_GOOD | FOREIGN, FOREIGN), sector_size=ss)
    pristine = disk.copy()
    if where:
        corrupt(disk, where)
    t = gptformat.read_table(disk)
    new_b = slots.encode(FOREIGN, priority=2, tries=1, successful=False)
    plan = gptformat.plan_write(t, gptformat.with_attributes(t, {3: new_b}))
    # the copy in use is written last (backup first normally); each header after its entries
    first, second = plan.phases if t.primary.valid else plan.phases[::-1]
    backup_lbas = [lba for lba, _ in first]
    primary_lbas = [lba for lba, _ in second]
    assert backup_lbas[-1] == t.backup.header_lba and primary_lbas[-1] == 1
    disk.apply(plan)
    after = gptformat.read_table(disk)
    assert not after.needs_repair and after.primary.valid and after.backup.valid
    assert dict(state_of(disk))[4] == new_b
    # Compared with the pristine disk, only headers and the one entry's 8 attribute bytes differ.
    e_off = 3 * 128 + gptformat.ENTRY_ATTRIBUTES_OFFSET
    allowed = set()
    for hdr in (1, after.backup.header_lba):
        allowed |= set(range(hdr * ss, hdr * ss + 92))
    for ent in (after.primary.entries_lba, after.backup.entries_lba):
        allowed |= set(range(ent * ss + e_off, ent * ss + e_off + 8))
    diff = {i for i, (x, y) in enumerate(zip(pristine.data, disk.data, strict=True)) if x != y}
    assert diff <= allowed


def test_unchanged_valid_table_plans_nothing_and_repair_is_minimal() -> None:
    disk = build(flatcar_parts(A_GOOD))
    t = gptformat.read_table(disk)
    assert gptformat.plan_repair(t).empty
    corrupt(disk, "backup-header")
    plan = gptformat.plan_repair(gptformat.read_table(disk))
    assert [lba for lba, _ in plan.sectors()] == [t.backup.header_lba]
    disk.apply(plan)
    assert not gptformat.read_table(disk).needs_repair


def test_stale_backup_is_detected_and_primary_wins() -> None:
    disk = build(flatcar_parts(A_GOOD))
    t = gptformat.read_table(disk)
    new = gptformat.with_attributes(t, {3: slots.encode(0, priority=2, tries=1)})
    plan = gptformat.plan_write(t, new)
    for lba, payload in plan.phases[0]:  # cut after the whole backup phase
        disk.write(lba, payload)
    t2 = gptformat.read_table(disk)
    assert t2.backup_stale and t2.source == "primary"
    assert dict(state_of(disk))[4] == 0


def test_entries_by_number_and_names() -> None:
    disk = build(flatcar_parts(A_GOOD))
    t = gptformat.read_table(disk)
    by = gptformat.entries_by_number(t.used_entries())
    assert by[3].name == "USR-A" and by[3].number == 3


# --- power cuts ----------------------------------------------------------------------------

TRANSITIONS = st.sampled_from(["set-active", "next", "mark-good", "rollback"])


def _transition(name: str, ss: list[slots.Slot]) -> dict[int, int]:
    if name == "set-active":
        return dict(slots.set_active(ss, 4, booted=3, force=True).changes)
    if name == "next":
        return dict(slots.next_boot(ss)[1].changes)
    if name == "mark-good":
        return dict(slots.mark_good(ss, 4).changes)
    return dict(slots.prioritize(ss, 3))


@settings(max_examples=60, deadline=None)
@given(
    TRANSITIONS,
    st.sampled_from([512, 4096]),
    st.sampled_from([None, "primary-header", "primary-entries", "backup-header", "backup-entries"]),
    st.booleans(),
)
def test_power_cut_after_any_sector_leaves_old_or_new(
    name: str, ss: int, damage: str | None, torn: bool
) -> None:
    b = slots.encode(FOREIGN, priority=2, tries=1, successful=False)
    disk = build(flatcar_parts(A_GOOD | FOREIGN, b), sector_size=ss)
    if damage:
        corrupt(disk, damage)
    table = gptformat.read_table(disk)
    cur = list(slots_of(table.entries()))
    changes = _transition(name, cur)
    old = state_of(disk)
    new_slots = slots.apply(cur, changes)
    new = [(s.partition, s.attributes) for s in new_slots]
    plan = gptformat.plan_write(
        table, gptformat.with_attributes(table, {p - 1: a for p, a in changes.items()})
    )
    writes = plan.sectors()
    for cut in range(len(writes) + 1):
        d = disk.copy()
        for lba, payload in writes[:cut]:
            d.write(lba, payload)
        if torn and cut < len(writes):  # the next sector lands half written
            lba, payload = writes[cut]
            cur_bytes = bytearray(d.read(lba, 1))
            half = ss // 2
            cur_bytes[:half] = payload[:half]
            d.write(lba, bytes(cur_bytes))
        seen = state_of(d)  # never raises: one copy is always whole
        assert seen in (old, new), f"cut after {cut} of {len(writes)} sectors"
        assert (
            slots.choose_next([slots.Slot(p, "", slots.USR_TYPE, a) for p, a in seen]) is not None
        )

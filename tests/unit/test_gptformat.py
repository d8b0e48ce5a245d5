"""GPT parsing, copy selection, write plans and crash safety, on in-memory disks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from updater import gptformat, slots
from updater.errors import GptError
from updater.slots import slots_of

from .memdisk import MemDisk, build, flatcar_parts, region_lba, rewrite_header, shrink_backup

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


# --- hostile geometry ---------------------------------------------------------------------


@pytest.mark.parametrize("ss", [512, 4096])
def test_backup_with_fewer_entries_is_never_overrun(ss: int) -> None:
    """A CRC-valid backup header that declares 4 entries (one sector right below it) must not
    make a write put the primary's whole array there: over the backup header, past the end."""
    disk = build(flatcar_parts(A_GOOD), sector_size=ss)
    shrink_backup(disk)
    table = gptformat.read_table(disk)
    assert not table.backup.valid and table.needs_repair
    cur = slots_of(table.entries())
    changes = slots.set_active(cur, 4, booted=3).changes
    plan = gptformat.plan_write(
        table, gptformat.with_attributes(table, {p - 1: a for p, a in changes.items()})
    )
    assert all(lba < disk.total_sectors for lba, _ in plan.sectors())
    size = len(disk.data)
    disk.apply(plan)
    assert len(disk.data) == size
    after = gptformat.read_table(disk)
    assert after.primary.valid and after.backup.valid and not after.needs_repair
    assert after.backup.header is not None and after.backup.header.num_entries == 128
    repaired = disk.copy()
    repaired.apply(gptformat.plan_repair(gptformat.read_table(repaired)))
    assert repaired.data == disk.data  # nothing left to repair


@pytest.mark.parametrize("alternate", [40, 2, 10**9])
def test_wrong_alternate_lba_does_not_hide_the_backup(alternate: int) -> None:
    disk = build(flatcar_parts(A_GOOD))
    rewrite_header(disk, 1, alternate_lba=alternate)
    table = gptformat.read_table(disk)
    assert table.primary.valid and table.backup.valid
    assert table.backup.header_lba == disk.total_sectors - 1
    assert table.needs_repair and table.alternate_wrong
    plan = gptformat.plan_repair(table)
    assert [lba for lba, _ in plan.sectors()] == [1]  # only the primary header is rewritten
    disk.apply(plan)
    fixed = gptformat.read_table(disk)
    assert not fixed.needs_repair
    assert fixed.primary.header is not None
    assert fixed.primary.header.alternate_lba == disk.total_sectors - 1


# --- power cuts ----------------------------------------------------------------------------

TRANSITIONS = [
    "set-active", "next", "mark-good", "mark-bad", "rollback", "prioritize", "make-unbootable",
    "kexec", "give-back",
]  # fmt: skip
DAMAGE = [None, "primary-header", "primary-entries", "backup-header", "backup-entries"]


def _transition(name: str, ss: list[slots.Slot]) -> dict[int, int]:
    """Every transition the project writes, on a disk where A is good and B is on trial."""
    b = next(s for s in ss if s.partition == 4)
    decided = {
        "set-active": lambda: slots.set_active(ss, 4, tries=3, booted=3),
        "next": lambda: slots.next_boot(ss)[1],
        "mark-good": lambda: slots.mark_good(ss, 4),
        "mark-bad": lambda: slots.mark_bad(ss, 4),
        "rollback": lambda: slots.rollback(ss, 4, has_image=True),
        "prioritize": lambda: slots.prioritize_transition(ss, 3),
        "make-unbootable": lambda: slots.make_unbootable(ss, 4, booted=3),
        "kexec": lambda: slots.consume_try(ss, b),
        "give-back": lambda: slots.give_back_try(ss, b),
    }[name]()
    assert decided.changes, f"{name} changes nothing on this disk: the sweep would be empty"
    return dict(decided.changes)


@pytest.mark.parametrize("torn", [False, True])
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("ss", [512, 4096])
@pytest.mark.parametrize("name", TRANSITIONS)
def test_power_cut_after_any_sector_leaves_old_or_new(
    name: str, ss: int, damage: str | None, torn: bool
) -> None:
    """Exhaustive: every transition, both sector sizes, each copy damaged beforehand or none,
    a cut after every sector of the plan, with and without the next sector torn in half."""
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
        ) or name == "mark-bad" and seen == new


# --- the family: any CRC-valid header, whatever its numbers say ----------------------------

_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "alternate_lba": st.integers(0, 1 << 20),
        "entries_lba": st.integers(0, 1 << 20),
        "num_entries": st.integers(1, 256),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["primary", "backup"]), _FIELDS, st.sampled_from([512, 4096]))
def test_no_header_can_make_a_write_leave_its_place(
    which: str, fields: dict[str, int], ss: int
) -> None:
    """A header with any alternate LBA, entry location or entry count, and a correct CRC32:
    the table is read from a valid copy or refused, and a write then stays inside the disk,
    never touches the usable area, and leaves two valid copies with the new attributes."""
    disk = build(flatcar_parts(A_GOOD), sector_size=ss)
    t = gptformat.read_table(disk)
    rewrite_header(disk, 1 if which == "primary" else t.backup.header_lba, **fields)
    try:
        table = gptformat.read_table(disk)
    except GptError:
        return
    new_b = slots.encode(0, priority=2, tries=1)
    plan = gptformat.plan_write(table, gptformat.with_attributes(table, {3: new_b}))
    h = t.header
    for lba, data in plan.sectors():
        assert 0 < lba < disk.total_sectors and len(data) == ss
        assert not h.first_usable_lba <= lba <= h.last_usable_lba, f"wrote LBA {lba}"
    size = len(disk.data)
    disk.apply(plan)
    assert len(disk.data) == size
    after = gptformat.read_table(disk)
    assert after.primary.valid and after.backup.valid and not after.needs_repair
    assert dict(state_of(disk))[4] == new_b

"""The install as values (``updater.install.plan``): the layout with this disk's GUIDs, the
refusals and their order, the regions cleared before anything is written, the placement checks,
and the table the plan writes, read back by the project's GPT reader."""

from __future__ import annotations

import itertools
import re
import uuid

import pytest

from updater import gptformat
from updater.errors import DeviceError
from updater.guid import Guid
from updater.install import plan
from updater.layout import DiskLayout, GiB, MiB
from updater.records import dataclass, field, replace

# REFERENCE section 4: Flatcar's fixed USR GUIDs; section 1: P1 T0 S1.
USR_A = Guid("7130c94a-213a-4e5a-8e26-6cce9662f132")
USR_B = Guid("e03dd35c-7c2d-4a47-b3fe-27f15780a57c")
USR_A_ATTRS = 0x0101000000000000


@dataclass
class SparseDisk:
    """A disk of any size in memory: only written sectors are stored."""

    sector_size: int
    total_sectors: int
    sectors: dict[int, bytes] = field(default_factory=dict)

    def read(self, lba: int, count: int) -> bytes:
        zero = bytes(self.sector_size)
        return b"".join(self.sectors.get(n, zero) for n in range(lba, lba + count))

    def apply(self, writes: gptformat.WritePlan) -> None:
        self.sectors.update(writes.sectors())


def counting() -> DiskLayout:
    numbers = itertools.count(1)
    return plan.install_layout(lambda: Guid(f"{next(numbers):032x}"))


def placed(layout: DiskLayout, disk_bytes: int, ss: int = 512) -> plan.DiskPlan:
    """Each partition right after the previous one from 1 MiB, the last up to 1 MiB before
    the end, as libparted places them on a disk with 1 MiB alignment."""
    out = []
    lba = MiB // ss
    for spec in layout.partitions:
        size = spec.size or (disk_bytes - MiB) - lba * ss
        out.append(plan.Placed(spec, lba, lba + size // ss - 1))
        lba += size // ss
    return plan.DiskPlan(layout, ss, disk_bytes // ss, tuple(out))


def facts(**changes: object) -> plan.DiskFacts:
    base = plan.DiskFacts("/dev/vdb", "QEMU disk", "S123", 8 * GiB, 512, True, True, None)
    return replace(base, **changes)


def test_layout_has_fresh_guids_but_flatcars_usr_guids() -> None:
    layout = counting()
    by_label = {p.label: p for p in layout.partitions}
    assert by_label["USR-A"].partuuid == USR_A and by_label["USR-B"].partuuid == USR_B
    assert by_label["USR-A"].attributes == USR_A_ATTRS and by_label["USR-B"].attributes == 0
    others = {p.partuuid for p in layout.partitions if not p.label.startswith("USR-")}
    assert others | {layout.disk_guid} == {Guid(f"{n:032x}") for n in range(1, 7)}
    assert [p.number for p in layout.partitions] == [1, 2, 3, 4, 6, 7, 9]
    assert plan.install_layout().disk_guid != plan.install_layout().disk_guid
    # By default fresh random GUIDs, as uuid.uuid4 makes them (version 4, RFC 4122 variant).
    fresh = uuid.UUID(bytes=plan.install_layout().partition("ROOT").partuuid.bytes)
    assert (fresh.version, fresh.variant) == (4, uuid.RFC_4122)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"running": True, "mounts": ("/",)}, "holds the running system"),
        ({"mounts": ("/mnt",), "table": "gpt"}, r"in use \(mounted at /mnt\)"),
        ({"holders": ("dm-0",)}, r"in use \(dm-0\)"),
        ({"whole_disk": False}, "is a partition"),
        ({"size": 4 * GiB}, "the layout needs at least"),
        ({"table": "gpt", "partitions": ("1 (bytes 1-2)",)}, "a gpt partition table; partition 1"),
        ({"signatures": ("LVM2_member at 0x218",)}, "LVM2_member at 0x218"),
    ],
)
def test_refusals_in_their_order(changes: dict[str, object], message: str) -> None:
    refused = plan.refusal(facts(**changes), counting().size, wipe=False)
    assert isinstance(refused, DeviceError)
    assert re.search(message, refused.message), refused.message


def test_wipe_allows_a_disk_with_data_but_never_one_in_use() -> None:
    needed = counting().size
    full = facts(table="msdos", signatures=("ext4 at 0x438",))
    assert plan.refusal(full, needed, wipe=False) is not None
    assert plan.refusal(full, needed, wipe=True) is None
    for busy in (facts(running=True), facts(mounts=("/srv",)), facts(holders=("md0",))):
        assert plan.refusal(busy, needed, wipe=True) is not None
    assert plan.refusal(facts(), needed, wipe=False) is None


def test_describe_names_model_serial_and_size() -> None:
    assert facts().describe() == "/dev/vdb (QEMU disk, serial S123, 8.0 GiB)"
    assert "image file" in facts(block=False).describe()


def test_clear_starts_with_the_protective_mbr_and_covers_both_ends_of_everything() -> None:
    disk = 8 * GiB
    p = placed(counting(), disk)
    regions = p.clear()
    assert regions[0] == plan.Region(0, MiB) and regions[1] == plan.Region(disk - MiB, MiB)
    for part in p.placed:
        r = p.region(part.spec.label)
        assert plan.Region(r.offset, MiB) in regions
        assert plan.Region(r.offset + r.size - MiB, MiB) in regions


def test_placement_checks() -> None:
    layout = counting()
    good = placed(layout, 8 * GiB)
    usr = good.placed[2]
    with pytest.raises(DeviceError, match="unaligned"):
        plan.DiskPlan(layout, 512, good.total_sectors,
                      (*good.placed[:2], replace(usr, first_lba=usr.first_lba + 1),
                       *good.placed[3:]))  # fmt: skip
    with pytest.raises(DeviceError, match="would get"):
        plan.DiskPlan(layout, 512, good.total_sectors,
                      (*good.placed[:2], replace(usr, last_lba=usr.last_lba - 2048),
                       *good.placed[3:]))  # fmt: skip
    with pytest.raises(DeviceError, match="not the layout's"):
        plan.DiskPlan(layout, 512, good.total_sectors, good.placed[::-1])


@pytest.mark.parametrize("ss", [512, 4096])
def test_the_planned_table_reads_back_as_planned(ss: int) -> None:
    disk_bytes = 6 * GiB
    p = placed(counting(), disk_bytes, ss)
    disk = SparseDisk(ss, disk_bytes // ss)
    disk.apply(p.table())
    table = gptformat.read_table(disk)
    assert table.entries_raw == p.entry_array() and table.header.disk_guid == p.layout.disk_guid
    found = gptformat.entries_by_number(table.used_entries())
    for part in p.placed:
        e = found[part.spec.number]
        assert (e.name, e.type_guid, e.unique_guid, e.attributes) == (
            part.spec.label, part.spec.type_guid, part.spec.partuuid, part.spec.attributes,
        )  # fmt: skip
        assert (e.first_lba, e.last_lba) == (part.first_lba, part.last_lba)
    assert [s.label for s in p.slots()] == ["USR-A", "USR-B"]
    assert p.slots()[0].successful and p.slots()[0].priority == 1

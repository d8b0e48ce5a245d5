"""What updater writes, cgpt and sgdisk read the same, and the other way round; damaged tables;
4096-byte sectors; the CLI's error contract. Real tools on sparse image files."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from updater import gpt, gptformat, layout, slotimage, slots, state, target
from updater.guid import Guid

from ..unit.memdisk import REGIONS, MemDisk, region_lba, rewrite_header, shrink_backup
from .conftest import CgptField, Cli, loop_device, need_tools, sgdisk_attributes, sha, tool

pytestmark = pytest.mark.integration

FOREIGN = (1 << 0) | (1 << 2) | (1 << 57) | (1 << 60) | (1 << 63) | (0x5A5A << 20)
CHROMEOS_KERNEL = Guid("fe3a2a5d-4f32-41a7-b725-accc3285a309")


def status(cli: Cli, disk: Path, booted: str = "A") -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        cli("--disk", str(disk), "--booted", booted, "status", "--json").stdout
    )
    return doc


def slot_fields(doc: dict[str, object], part: int) -> tuple[int, int, bool]:
    for s in doc["slots"]:  # type: ignore[attr-defined]
        if s["partition"] == part:
            return s["priority"], s["tries"], s["successful"]
    raise AssertionError(f"no slot {part}")


def set_b(attrs: int) -> Callable[[state.DiskState], slots.Transition]:
    return lambda _st: slots.Transition("test", 4, {4: attrs})


def test_cgpt_and_sgdisk_read_what_updater_writes(
    flatcar_disk: Path, cli: Cli, cgpt_field: CgptField
) -> None:
    rng = random.Random(7)
    for _ in range(12):
        p, t, s = rng.randint(0, 15), rng.randint(0, 15), rng.random() < 0.5
        attrs = slots.encode(FOREIGN, priority=p, tries=t, successful=s)
        outcome = state.change(target.resolve(str(flatcar_disk), "A"), set_b(attrs))
        assert outcome.sectors_written > 0
        assert (cgpt_field(flatcar_disk, 4, "P"), cgpt_field(flatcar_disk, 4, "T")) == (p, t)
        assert cgpt_field(flatcar_disk, 4, "S") == int(s)
        assert sgdisk_attributes(flatcar_disk, 4) == attrs
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))


def test_updater_reads_what_cgpt_and_sgdisk_write(
    flatcar_disk: Path, cli: Cli, cgpt_field: CgptField
) -> None:
    rng = random.Random(11)
    for _ in range(4):
        p, t, s = rng.randint(0, 15), rng.randint(0, 15), rng.randint(0, 1)
        tool("cgpt", "add", "-i", "4", "-P", str(p), "-T", str(t), "-S", str(s), str(flatcar_disk))
        assert slot_fields(status(cli, flatcar_disk), 4) == (p, t, bool(s))
        raw = rng.getrandbits(64)
        tool("sgdisk", f"--attributes=3:=:{raw:016x}", str(flatcar_disk))
        st = state.load(target.resolve(str(flatcar_disk), "A"))
        assert st.slot(3).attributes == raw


def test_cli_transitions_match_flatcar_and_tools(
    flatcar_disk: Path, cli: Cli, cgpt_field: CgptField
) -> None:
    d = str(flatcar_disk)
    tool("sgdisk", f"--attributes=4:=:{FOREIGN:016x}", d)
    cli("--disk", d, "--booted", "A", "set-active", "B")
    assert [cgpt_field(flatcar_disk, 4, f) for f in "PTS"] == [2, 1, 0]
    assert [cgpt_field(flatcar_disk, 3, f) for f in "PTS"] == [1, 0, 1]
    nxt = json.loads(cli("--disk", d, "next", "--json").stdout)
    assert nxt == {"partition": 4, "partuuid": str(slot_uuid(flatcar_disk, 4)), "label": "USR-B"}
    assert cgpt_field(flatcar_disk, 4, "T") == 0
    # B never marked itself good: the next boot falls back to A, writing nothing.
    before = sha(flatcar_disk)
    assert json.loads(cli("--disk", d, "next", "--json").stdout)["partition"] == 3
    assert sha(flatcar_disk) == before
    # second try, then B proves itself
    cli("--disk", d, "--booted", "A", "set-active", "B")
    cli("--disk", d, "next")
    cli("--disk", d, "--booted", "B", "mark-good")
    assert [cgpt_field(flatcar_disk, 4, f) for f in "PTS"] == [2, 0, 1]
    for _ in range(3):
        assert json.loads(cli("--disk", d, "next", "--json").stdout)["partition"] == 4
    assert sgdisk_attributes(flatcar_disk, 4) & ~slots.OWNED_MASK == FOREIGN


def slot_uuid(disk: Path, part: int) -> Guid:
    found: Guid = state.load(target.resolve(str(disk), "A")).slot(part).partuuid
    return found


def test_prioritize_matches_cgpt(fast_tmp: Path) -> None:
    """cgpt prioritize only works on ChromeOS kernel partitions; our rule takes any type."""
    need_tools("cgpt", "sgdisk")
    rng = random.Random(3)
    for round_ in range(8):
        img = fast_tmp / f"k{round_}.img"
        img.write_bytes(b"")
        n = rng.randint(2, 6)
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        argv = ["sgdisk", "-o"]
        for i in range(1, n + 1):
            argv += [f"-n={i}:0:+1M", f"-t={i}:{CHROMEOS_KERNEL}"]
        tool(*argv, str(img))
        for i in range(1, n + 1):
            tool(
                "cgpt", "add", "-i", str(i), "-P", str(rng.choice([0, 0, 1, 2, 3, 5, 15])), str(img)
            )
        chosen = rng.randint(1, n)
        with gpt.locked(str(img), writable=False) as d:
            ours = slots.prioritize(
                slots.slots_of(gpt.read_table(d).entries(), CHROMEOS_KERNEL), chosen
            )
        tool("cgpt", "prioritize", "-i", str(chosen), str(img))
        with gpt.locked(str(img), writable=False) as d:
            theirs = {
                s.partition: s.attributes
                for s in slots.slots_of(gpt.read_table(d).entries(), CHROMEOS_KERNEL)
            }
        assert ours == theirs, f"round {round_}"




def damage(disk: Path, where: str) -> None:
    with gpt.locked(str(disk), writable=False) as d:
        t = gpt.read_table(d)
    lba = region_lba(t, where)
    with open(disk, "r+b") as f:
        f.seek(lba * t.sector_size + 24)
        byte = f.read(1)
        f.seek(lba * t.sector_size + 24)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("where", REGIONS)
def test_damaged_copy_reads_and_next_repairs_only_when_it_writes(
    flatcar_disk: Path, cli: Cli, where: str
) -> None:
    d = str(flatcar_disk)
    damage(flatcar_disk, where)
    doc = status(cli, flatcar_disk)
    assert doc["next"] == 3
    gpt_doc = doc["gpt"]
    assert isinstance(gpt_doc, dict)
    side = where.split("-")[0]
    assert gpt_doc[side] != "valid"
    # A has tries 0 and is successful: next boots it and writes nothing, damage stays.
    before = sha(flatcar_disk)
    assert json.loads(cli("--disk", d, "next", "--json").stdout)["partition"] == 3
    assert sha(flatcar_disk) == before
    # A write that is needed anyway repairs the damaged copy on the way.
    cli("--disk", d, "--booted", "A", "set-active", "B", "--tries", "3")
    cli("--disk", d, "next")
    doc = status(cli, flatcar_disk)
    assert doc["gpt"] == {
        "primary": "valid",
        "backup": "valid",
        "sector_size": 512,
        "source": "primary",
    }
    assert slot_fields(doc, 4) == (2, 2, False)
    assert "No problems found" in tool("sgdisk", "-v", d)


@pytest.mark.parametrize("where", REGIONS)
def test_repair_command(flatcar_disk: Path, cli: Cli, where: str) -> None:
    damage(flatcar_disk, where)
    out = json.loads(cli("--disk", str(flatcar_disk), "repair", "--json").stdout)
    assert out["sectors_written"] >= 1
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))
    assert (
        json.loads(cli("--disk", str(flatcar_disk), "repair", "--json").stdout)["sectors_written"]
        == 0
    )


def test_both_copies_damaged_is_one_clear_error(flatcar_disk: Path, cli: Cli) -> None:
    damage(flatcar_disk, "primary-header")
    damage(flatcar_disk, "backup-entries")
    before = sha(flatcar_disk)
    proc = cli("--disk", str(flatcar_disk), "next", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "both GPT copies are invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha(flatcar_disk) == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--booted", "A", "set-active", "C"], 2, "no slot named 'C'"),
        (["--booted", "A", "set-active", "A"], 1, "is the booted slot"),
        (["--booted", "A", "set-active", "B", "--tries", "0"], 2, "at least 1"),
        (["--booted", "A", "rollback"], 1, "holds no image"),
        (["mark-bad", "A"], 1, "no other slot could boot"),
        (["prioritize", "9"], 2, "partition 9 is not a slot"),
        (["bogus-command"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(
    flatcar_disk: Path, cli: Cli, args: list[str], code: int, message: str
) -> None:
    before = sha(flatcar_disk)
    proc = cli("--disk", str(flatcar_disk), *args, check=False)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, usage errors included
    assert sha(flatcar_disk) == before


def test_not_a_gpt_disk(tmp_path: Path, cli: Cli) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(1 << 20))
    proc = cli("--disk", str(junk), "status", check=False)
    assert proc.returncode == 1 and "protective MBR" in proc.stderr
    proc = cli("--disk", str(tmp_path / "missing.img"), "status", check=False)
    assert proc.returncode == 1 and "no such disk" in proc.stderr


def test_dry_run_writes_nothing(flatcar_disk: Path, cli: Cli) -> None:
    before = sha(flatcar_disk)
    out = json.loads(
        cli(
            "--disk", str(flatcar_disk), "--booted", "A", "set-active", "B", "--dry-run", "--json"
        ).stdout
    )
    assert out["dry_run"] is True and out["next"] == 4 and out["changed"] == [4]
    cli("--disk", str(flatcar_disk), "next", "--dry-run")
    assert sha(flatcar_disk) == before


def test_rollback_to_a_good_slot(flatcar_disk: Path, cli: Cli, cgpt_field: CgptField) -> None:
    d = str(flatcar_disk)
    # give USR-A a filesystem signature so it "holds an image", then run B and mark it good
    with gpt.locked(d, writable=False) as disk:
        a = gptformat.entries_by_number(gpt.read_table(disk).entries())[3]
    with open(d, "r+b") as f:
        f.seek(a.first_lba * 512)
        f.write(b"hsqs")
    cli("--disk", d, "--booted", "A", "set-active", "B")
    cli("--disk", d, "next")
    cli("--disk", d, "--booted", "B", "mark-good")
    out = json.loads(cli("--disk", d, "--booted", "B", "rollback", "--json").stdout)
    assert out["next"] == 3
    assert [cgpt_field(flatcar_disk, 3, f) for f in "PTS"] == [2, 0, 1]
    assert [cgpt_field(flatcar_disk, 4, f) for f in "PTS"] == [1, 0, 1]


def test_4096_byte_sectors_on_a_loop_device(
    fast_tmp: Path, cli: Cli, cgpt_field: CgptField
) -> None:
    need_tools("sgdisk")
    img = fast_tmp / "4k.img"
    lay = layout.flatcar_layout(
        usr_size=16 * layout.MiB,
        esp_size=8 * layout.MiB,
        oem_size=8 * layout.MiB,
        root_size=32 * layout.MiB,
    )
    with open(img, "wb") as f:
        f.truncate(lay.size + 16 * layout.MiB)
    with loop_device(img, 4096) as dev:
        layout.create_disk(lay, dev, overwrite=True, sector_size=4096)
        cli("--disk", dev, "--booted", "A", "set-active", "B", "--tries", "2")
        doc = status(cli, Path(dev))
        assert doc["gpt"]["sector_size"] == 4096  # type: ignore[index]
        assert slot_fields(doc, 4) == (2, 2, False)
        assert [cgpt_field(Path(dev), 4, f) for f in "PTS"] == [2, 2, 0]
        assert "No problems found" in tool("sgdisk", "-v", dev)
    # the same bytes as a plain file: the sector size is probed from the header position
    st = state.load(target.resolve(str(img), "A"))
    assert st.table.sector_size == 4096 and st.slot(4).tries == 2


def test_partition_nodes_of_a_block_device(fast_tmp: Path, cli: Cli) -> None:
    """On a block device, partitions are read through their own nodes (separate page cache)."""
    from updater import bootfs

    img = fast_tmp / "p.img"
    lay = layout.flatcar_layout(
        usr_size=8 * layout.MiB, esp_size=4 * layout.MiB, oem_size=4 * layout.MiB,
        root_size=4 * layout.MiB,
    )  # fmt: skip
    layout.create_disk(lay, str(img))
    assert bootfs.partition_node(str(img), 3) is None  # an image file has no nodes
    with loop_device(img, 512, partscan=True) as dev:
        for _ in range(50):  # udev may take a moment to create the nodes
            if Path(f"{dev}p3").exists():
                break
            time.sleep(0.1)
        if not Path(f"{dev}p3").exists():
            pytest.skip("the kernel created no partition nodes for the loop device")
        assert bootfs.partition_node(dev, 3) == f"{dev}p3"
        assert bootfs.partition_node(dev, 9) == f"{dev}p9"
        assert bootfs.partition_node(dev, 5) is None
        with open(f"{dev}p3", "r+b") as f:
            f.write(b"hsqs")
        st = state.load(target.resolve(dev, "B"))
        assert slotimage.holds_image(dev, st.table, 3)
        assert not slotimage.holds_image(dev, st.table, 4)


def edit_image(path: Path, change: Callable[[MemDisk], None]) -> None:
    disk = MemDisk(bytearray(path.read_bytes()), 512)
    change(disk)
    path.write_bytes(bytes(disk.data))


def test_backup_with_fewer_entries_is_rebuilt_not_overrun(flatcar_disk: Path, cli: Cli) -> None:
    """A CRC-valid backup header declaring 4 entries: a write must not put 128 entries below
    it (over the header, past the end of the image), and repair must leave a valid backup."""
    size = flatcar_disk.stat().st_size
    edit_image(flatcar_disk, shrink_backup)
    doc = status(cli, flatcar_disk)
    assert doc["gpt"]["backup"] != "valid"  # type: ignore[index]
    cli("--disk", str(flatcar_disk), "--booted", "A", "set-active", "B")
    assert flatcar_disk.stat().st_size == size
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))
    edit_image(flatcar_disk, shrink_backup)
    out = json.loads(cli("--disk", str(flatcar_disk), "repair", "--json").stdout)
    assert out["sectors_written"] >= 1 and flatcar_disk.stat().st_size == size
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))


def test_wrong_alternate_lba_does_not_hide_the_backup(flatcar_disk: Path, cli: Cli) -> None:
    edit_image(flatcar_disk, lambda d: rewrite_header(d, 1, alternate_lba=40))
    assert status(cli, flatcar_disk)["next"] == 3
    cli("--disk", str(flatcar_disk), "--booted", "A", "set-active", "B")
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))
    assert slot_fields(status(cli, flatcar_disk), 4) == (2, 1, False)
    edit_image(flatcar_disk, lambda d: rewrite_header(d, 1, alternate_lba=40))
    cli("--disk", str(flatcar_disk), "repair")
    assert "No problems found" in tool("sgdisk", "-v", str(flatcar_disk))

"""updater.grubenv: the on-disk block format, its size limit, slot variables and reconcile rules."""

from __future__ import annotations

import uuid

import pytest

from updater import grubenv, slots
from updater.errors import UsageError
from updater.layout import USR_A_UUID, USR_B_UUID

HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4
OTHER_BIT = 1 << 57  # somebody else's bit: must survive every change


def usr(partition: int, label: str, p: int, t: int, s: bool, extra: int = 0) -> slots.Slot:
    guid = USR_A_UUID if label == "USR-A" else USR_B_UUID
    attributes = slots.encode(extra, priority=p, tries=t, successful=s)
    return slots.Slot(partition, label, guid, attributes)


def test_render_exact_format() -> None:
    block = grubenv.render({"a": "1", "b": ""})
    assert len(block) == 1024
    body = b"# GRUB Environment Block\na=1\nb=\n"
    assert block == body + b"#" * (1024 - len(body))


def test_empty_block_is_header_and_padding() -> None:
    block = grubenv.render({})
    assert block == b"# GRUB Environment Block\n" + b"#" * (1024 - 25)
    assert grubenv.parse(block) == {}


def test_round_trip_keeps_order_and_values() -> None:
    values = {"usr_a_priority": "1", "x y": "with spaces and = signs", "empty": ""}
    parsed = grubenv.parse(grubenv.render(values))
    assert parsed == values
    assert list(parsed) == list(values)


def test_parse_undoes_grub_escapes() -> None:
    block = b"# GRUB Environment Block\nk=a\\\\b\\\nc\n" + b"#" * 100
    assert grubenv.parse(block) == {"k": "a\\b\nc"}


def test_parse_requires_header() -> None:
    with pytest.raises(UsageError):
        grubenv.parse(b"k=v\n" + b"#" * 1020)


def test_size_limit() -> None:
    header = len(grubenv.HEADER)
    fits = {"k": "v" * (1024 - header - 3)}  # "k=" + value + "\n" fills the block exactly
    assert grubenv.render(fits).endswith(b"\n")
    with pytest.raises(UsageError, match="more than"):
        grubenv.render({"k": "v" * (1024 - header - 2)})


@pytest.mark.parametrize(
    ("name", "value"), [("a=b", "1"), ("", "1"), ("a\nb", "1"), ("#a", "1"), ("a", "x\ny")]
)
def test_invalid_names_and_values(name: str, value: str) -> None:
    with pytest.raises(UsageError):
        grubenv.render({name: value})


def test_slot_vars_for_the_factory_layout() -> None:
    table = [usr(3, "USR-A", 1, 0, True), usr(4, "USR-B", 0, 0, False)]
    values = grubenv.slot_vars(table, {"A": HASH_A})
    assert values == {
        "usr_a_priority": "1",
        "usr_a_tries": "0",
        "usr_a_successful": "1",
        "usr_a_partuuid": str(USR_A_UUID),
        "usr_a_hash": HASH_A,
        "usr_a_partition": "3",
        "usr_b_priority": "0",
        "usr_b_tries": "0",
        "usr_b_successful": "0",
        "usr_b_partuuid": str(USR_B_UUID),
        "usr_b_hash": "",
        "usr_b_partition": "4",
        "usr_sync": "3:0101000000000000,4:0000000000000000",
    }
    # Both slots with hashes still fit comfortably in one block.
    full = grubenv.slot_vars(table, {"A": HASH_A, "B": HASH_B})
    assert len(grubenv.render(full)) == 1024


def test_slot_vars_rejects_bad_hash() -> None:
    with pytest.raises(UsageError):
        grubenv.slot_vars([usr(3, "USR-A", 1, 0, True)], {"A": HASH_A.upper()})


def test_sync_token_has_full_attributes() -> None:
    table = [usr(4, "USR-B", 2, 1, False), usr(3, "USR-A", 1, 0, True, OTHER_BIT)]
    assert grubenv.sync_token(table) == "3:0301000000000000,4:0012000000000000"


def after_update() -> list[slots.Slot]:
    return [usr(3, "USR-A", 1, 0, True, OTHER_BIT), usr(4, "USR-B", 2, 1, False)]


def test_reconcile_carries_grubs_decrement() -> None:
    table = after_update()
    env = grubenv.slot_vars(table, {})
    env["usr_b_tries"] = "0"  # what save_env wrote when GRUB booted B on trial
    assert grubenv.reconcile(env, table) == {4: slots.encode(table[1].attributes, tries=0)}


def test_reconcile_nothing_when_unchanged() -> None:
    table = after_update()
    assert grubenv.reconcile(grubenv.slot_vars(table, {}), table) == {}


def test_reconcile_ignores_stale_env() -> None:
    table = after_update()
    env = grubenv.slot_vars(table, {})
    env["usr_b_tries"] = "0"
    newer = slots.apply(table, {4: slots.encode(table[1].attributes, tries=1, successful=True)})
    assert grubenv.reconcile(env, newer) == {}


def test_reconcile_only_lowers_tries() -> None:
    table = after_update()
    env = grubenv.slot_vars(table, {})
    env.update(
        usr_a_tries="5",  # up: ignored
        usr_a_priority="0",  # never carried back
        usr_b_successful="1",  # never carried back
        usr_b_priority="9",
    )
    assert grubenv.reconcile(env, table) == {}
    for junk in ("", "-1", "x", "0x0", "١"):
        env["usr_b_tries"] = junk
        assert grubenv.reconcile(env, table) == {}


def test_reconcile_preserves_foreign_bits() -> None:
    table = [usr(3, "USR-A", 2, 3, False, OTHER_BIT), usr(4, "USR-B", 1, 0, True)]
    env = grubenv.slot_vars(table, {})
    env["usr_a_tries"] = "1"
    changes = grubenv.reconcile(env, table)
    assert changes == {3: slots.encode(0, priority=2, tries=1, successful=False) | OTHER_BIT}


def test_other_partitions_are_not_slots() -> None:
    table = [usr(3, "USR-A", 1, 0, True), slots.Slot(5, "USR-C2", uuid.uuid4(), 0)]
    values = grubenv.slot_vars(table, {})
    assert "usr_a_priority" in values and not any(k.startswith("usr_c") for k in values)
    assert values["usr_sync"].startswith("3:0101000000000000,5:")

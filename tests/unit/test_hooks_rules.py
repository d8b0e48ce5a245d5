"""The pure part of hooks: which names run and in what order, the environment, a stage's
verdict, the once-per-slot ledger, and the pin file's format."""

from __future__ import annotations

import json

import pytest

from updater import pin
from updater.errors import DataError, ReleaseError, UsageError
from updater.hooks import rules
from updater.hooks.rules import (
    Context,
    FirstBootStatus,
    HookResult,
    LedgerEntry,
    Next,
    Stage,
    Verdict,
)
from updater.release import parse_version


def test_names_run_in_byte_order_and_leftovers_are_skipped() -> None:
    names = ["50-b", "10-a", "B-upper", "a-lower", "9-x", ".hidden", "20-c~", "30.dpkg-old",
             "40.rpmnew", "README.disabled", "has space", "x.swp", "_under"]  # fmt: skip
    run, skipped = rules.order(names)
    # run-parts' C-locale order: digits, then upper case, then "_", then lower case
    assert run == ["10-a", "50-b", "9-x", "B-upper", "_under", "a-lower"]
    assert sorted(skipped) == sorted(["20-c~", "30.dpkg-old", "40.rpmnew", ".hidden",
                                      "README.disabled", "has space", "x.swp"])  # fmt: skip


def test_every_variable_is_set_and_unknown_ones_are_empty() -> None:
    env = rules.environment(Context(Stage.POST_INSTALL, "2", "B", "e03dd35c", "A", None,
                                    mount="/run/updater/hooks/slot-x"))  # fmt: skip
    assert env == {
        "UPDATER_STAGE": "post-install", "UPDATER_VERSION": "2", "UPDATER_SLOT": "B",
        "UPDATER_SLOT_PARTUUID": "e03dd35c", "UPDATER_BOOTED_SLOT": "A",
        "UPDATER_BOOTED_VERSION": "", "UPDATER_SLOT_MOUNT": "/run/updater/hooks/slot-x",
        "UPDATER_REBOOT_FILE": "", "UPDATER_STATE_DIR": "",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("into", "booted", "good", "due"),
    [
        (4, 3, False, True),  # a new slot: just activated, or given a try by a forced rollback
        (3, 4, True, False),  # back to a good slot: a rollback
        (3, 3, False, False),  # the booted slot itself (a first boot asking one more reboot)
        (4, None, False, False),  # the booted slot is unknown: an installer booting its disk
        (None, 3, False, False),  # nothing can boot
    ],
)  # fmt: skip
def test_only_a_reboot_into_a_new_slot_runs_pre_reboot_hooks(
    into: int | None, booted: int | None, good: bool, due: bool
) -> None:
    assert rules.pre_reboot_due(into, booted, good) is due


def test_the_first_failure_is_the_verdict() -> None:
    results = [HookResult("10-a", 0), HookResult("20-b", 3)]
    assert rules.judge(Stage.PRE_INSTALL, results) == Verdict(
        "pre-install hook 20-b exited 3", False, ("10-a", "20-b"))
    killed = rules.judge(Stage.PRE_REBOOT, [HookResult("x", -9)])
    assert killed.failure == "pre-reboot hook x was killed by signal 9"
    late = rules.judge(Stage.POST_COMMIT, [HookResult("x", None, "did not finish within 5 s")])
    assert late.failure == "post-commit hook x did not finish within 5 s"
    assert rules.judge(Stage.PRE_INSTALL, []).ok


def test_only_a_first_boot_hook_may_ask_for_a_reboot() -> None:
    asked = [HookResult("a", 0), HookResult("b", rules.REBOOT_EXIT), HookResult("c", 0)]
    v = rules.judge(Stage.FIRST_BOOT, asked)
    assert v.ok and v.reboot
    assert rules.passed(Stage.FIRST_BOOT, asked[1])
    other = rules.judge(Stage.POST_INSTALL, [HookResult("b", rules.REBOOT_EXIT)])
    assert other.failure == f"post-install hook b exited {rules.REBOOT_EXIT}" and not other.reboot
    by_file = rules.judge(Stage.FIRST_BOOT, [HookResult("a", 0)], reboot_file=True)
    assert by_file.ok and by_file.reboot
    assert not rules.judge(Stage.PRE_REBOOT, [HookResult("a", 0)], reboot_file=True).reboot


def test_which_stages_stop_their_flow() -> None:
    assert [s for s in Stage if not s.aborts] == [Stage.POST_COMMIT]
    assert Stage.FIRST_BOOT.directory == "first-boot-of-slot.d"


UUID = "E03DD35C-7C2D-4A47-B3FE-27F15780A57C"
IMAGE = rules.image_key("2", "ab" * 32)


def test_once_per_activation() -> None:
    ledger: dict[str, LedgerEntry] = {}
    assert rules.next_step(ledger, UUID, IMAGE, "boot-1") is Next.RUN
    ledger = rules.recorded(ledger, UUID, IMAGE, Verdict(), "boot-1")
    for boot in ("boot-1", "boot-2", ""):  # the same boot, a later one, an unknown one
        assert rules.next_step(ledger, UUID.lower(), IMAGE, boot) is Next.DONE
    # another image in the slot (written by another tool) is a new first boot
    assert rules.next_step(ledger, UUID, rules.image_key("3", ""), "boot-2") is Next.RUN
    # the update flow forgets the slot when it rewrites it
    assert rules.next_step(rules.forgotten(ledger, UUID), UUID, IMAGE, "boot-2") is Next.RUN


def test_a_failed_first_boot_stays_failed() -> None:
    ledger = rules.recorded({}, UUID, IMAGE, Verdict("first-boot-of-slot hook x exited 1"), "b1")
    assert rules.next_step(ledger, UUID, IMAGE, "b2") is Next.FAILED
    assert ledger[UUID.lower()].detail == "first-boot-of-slot hook x exited 1"


def test_a_reboot_asked_for_is_done_only_in_another_boot() -> None:
    ledger = rules.recorded({}, UUID, IMAGE, Verdict(reboot=True), "boot-1")
    assert rules.next_step(ledger, UUID, IMAGE, "boot-1") is Next.REBOOT
    assert rules.next_step(ledger, UUID, IMAGE, "") is Next.REBOOT  # cannot tell: not yet
    assert rules.next_step(ledger, UUID, IMAGE, "boot-2") is Next.DONE
    after = rules.rebooted(ledger, UUID)
    assert after[UUID.lower()].status is FirstBootStatus.DONE
    assert rules.next_step(after, UUID, IMAGE, "boot-1") is Next.DONE


def test_the_ledger_round_trips_and_is_bounded() -> None:
    ledger: dict[str, LedgerEntry] = {}
    for i in range(rules.MAX_LEDGER_SLOTS + 3):
        ledger = rules.recorded(ledger, f"uuid-{i}", IMAGE, Verdict(reboot=i % 2 == 0), f"b{i}")
    assert len(ledger) == rules.MAX_LEDGER_SLOTS and "uuid-0" not in ledger
    assert rules.loads_ledger(rules.dumps_ledger(ledger)) == ledger


@pytest.mark.parametrize("data", [
    b"", b"[]", b'{"format": 2, "slots": {}}', b'{"format": 1}',
    b'{"format": 1, "slots": {}, "extra": 1}',
    b'{"format": 1, "slots": {"u": {"image": "x", "status": "maybe", "detail": "", '
    b'"boot_id": ""}}}',
    b'{"format": 1, "slots": {"u": {"image": 1, "status": "done", "detail": "", '
    b'"boot_id": ""}}}',
    b'{"format": 1, "slots": {"u": {"image": "x", "status": "done"}}}',
    b" " * (rules.MAX_LEDGER_BYTES + 1),
])  # fmt: skip
def test_a_damaged_ledger_is_refused(data: bytes) -> None:
    with pytest.raises(DataError):
        rules.loads_ledger(data)


def test_pin_file_format() -> None:
    data = pin.render(parse_version("3815.2.0"))
    assert json.loads(data) == {"format": 1, "version": "3815.2.0"}
    assert pin.parse(data) == parse_version("3815.2.0")
    for bad in (b"", b"{}", b'{"format": 1, "version": "x"}', b'{"format": 2, "version": "1"}',
                b'{"format": 1, "version": "1", "by": "me"}', b"1" * 5000):  # fmt: skip
        with pytest.raises(DataError):
            pin.parse(bad)


def test_the_pin_decides_what_update_may_take() -> None:
    two, three = parse_version("2"), parse_version("3")
    assert pin.effective(None, None, False) is None
    assert pin.effective(None, three, False) == three
    assert pin.effective(two, None, False) == two
    assert pin.effective(two, two, False) == two
    with pytest.raises(ReleaseError, match="pinned to release 2: --version 3 refused"):
        pin.effective(two, three, False)
    assert pin.effective(two, three, True) == three
    with pytest.raises(UsageError, match="--override-pin needs --version"):
        pin.effective(two, None, True)

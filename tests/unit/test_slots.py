"""The slot engine: codec, GRUB's choice, cgpt prioritize, transitions and their safety rule."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from updater import slots
from updater.errors import NoBootableSlot, SlotError, UsageError
from updater.guid import Guid
from updater.slots import Slot, encode

# The bits the slot engine owns, from the ChromeOS/Flatcar layout (priority 48-51, tries 52-55,
# successful 56), written out here rather than taken from the module under test.
OWNED = 0x01FF_0000_0000_0000
FOREIGN_BITS = st.integers(0, (1 << 64) - 1).map(lambda v: v & ~OWNED)


def bits(p: int, t: int, s: bool, extra: int = 0) -> int:
    return extra | p << 48 | t << 52 | int(s) << 56


def new_guid() -> Guid:
    return Guid(bytes=os.urandom(16))


def mk(part: int, p: int, t: int, s: bool, label: str | None = None, extra: int = 0) -> Slot:
    name = label or f"USR-{chr(ord('A') + part - 3)}"
    return Slot(part, name, new_guid(), bits(p, t, s, extra))


def pts(ss: list[Slot] | tuple[Slot, ...]) -> list[tuple[int, int, bool]]:
    return [(s.priority, s.tries, s.successful) for s in ss]


# --- codec -------------------------------------------------------------------------------


def test_codec_reference_examples() -> None:
    assert encode(0, priority=2, tries=1, successful=False) == 0x0012000000000000
    assert encode(0, priority=1, tries=0, successful=True) == 0x0101000000000000


@given(FOREIGN_BITS, st.integers(0, 15), st.integers(0, 15), st.booleans())
def test_codec_round_trip_preserves_foreign_bits(extra: int, p: int, t: int, s: bool) -> None:
    a = encode(extra, priority=p, tries=t, successful=s)
    assert a == bits(p, t, s, extra)
    full = bits(p, t, s, extra | ~OWNED & ((1 << 64) - 1))  # every foreign bit set
    assert (slots.priority_of(full), slots.tries_of(full), slots.successful_of(full)) == (p, t, s)
    assert encode(a) == a  # no field given: nothing changes
    assert encode(full, priority=15 - p, tries=15 - t, successful=not s) == bits(
        15 - p, 15 - t, not s, full & ~OWNED
    )


@pytest.mark.parametrize("field", ["priority", "tries"])
@pytest.mark.parametrize("value", [-1, 16])
def test_codec_rejects_out_of_range(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=f"^{field} must be between 0 and 15, not {value}$"):
        encode(0, **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 15])
def test_codec_accepts_the_bounds(value: int) -> None:
    assert encode(0, priority=value, tries=value) == bits(value, value, False)


# --- choose_next / next_boot (GRUB gptprio.next) -------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ([(1, 0, True), (0, 0, False)], 3),  # fresh Flatcar disk
        ([(1, 0, True), (2, 1, False)], 4),  # after an update
        ([(1, 0, True), (2, 0, False)], 3),  # the new slot used its try
        ([(2, 0, True), (2, 1, False)], 3),  # tie: lower index wins
        ([(0, 5, True), (0, 5, True)], None),  # priority 0 never boots
        ([(3, 0, False), (1, 0, False)], None),  # no tries, never good
        ([(15, 0, False), (1, 0, True)], 4),
    ],
)
def test_choose_next(state: list[tuple[int, int, bool]], expected: int | None) -> None:
    ss = [mk(3 + i, *x) for i, x in enumerate(state)]
    chosen = slots.choose_next(ss)
    assert (chosen.partition if chosen else None) == expected


def test_next_boot_reference_regression_sequence() -> None:
    """Three usr partitions 3/3/0, 2/2/0, 1/0/1 -> 2,2,2 then 3,3 then 4 forever (1-based 2,3,4
    in the reference; numbered 2,3,4 here too)."""
    ss = [mk(2, 3, 3, False, "USR-A"), mk(3, 2, 2, False, "USR-B"), mk(4, 1, 0, True, "USR-C")]
    seen = []
    tries = []
    for _ in range(8):
        chosen, t = slots.next_boot(ss)
        seen.append(chosen.partition)
        ss = slots.apply(ss, t.changes)
        tries.append(slots.tries_of(t.changes.get(chosen.partition, chosen.attributes)))
        if chosen.partition == 4:
            assert t.empty  # a successful slot with tries 0 is never written
    assert seen == [2, 2, 2, 3, 3, 4, 4, 4]
    assert tries[:5] == [2, 1, 0, 1, 0]


def test_next_boot_no_candidate() -> None:
    with pytest.raises(NoBootableSlot):
        slots.next_boot([mk(3, 0, 0, True), mk(4, 1, 0, False)])


# --- prioritize (cgpt) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prios", "chosen", "expected"),
    [
        ([1, 0], 4, [1, 2]),  # Flatcar postinst: B P2, A P1
        ([1, 0, 0], 4, [1, 2, 0]),  # zero groups are not counted and stay zero
        ([2, 1], 3, [2, 1]),  # already on top
        ([1, 1, 1], 4, [1, 2, 1]),  # friends of equal priority stay together
        ([5, 3, 3, 1], 6, [2, 1, 1, 3]),  # 3 groups -> 3,2,1; order kept
        ([0, 0], 3, [1, 0]),
    ],
)
def test_prioritize_hand_worked(prios: list[int], chosen: int, expected: list[int]) -> None:
    ss = [mk(3 + i, p, 0, True) for i, p in enumerate(prios)]
    out = slots.prioritize(ss, chosen)
    assert [slots.priority_of(out[s.partition]) for s in ss] == expected


def test_prioritize_coalesces_at_one_when_groups_exceed_max() -> None:
    ss = [mk(3 + i, p, 0, True) for i, p in enumerate([5, 4, 3, 2, 1])]
    out = slots.prioritize(ss, 7, max_priority=3)
    assert [slots.priority_of(out[s.partition]) for s in ss] == [2, 1, 1, 1, 3]


@given(st.lists(st.tuples(st.integers(0, 15), FOREIGN_BITS), min_size=1, max_size=6), st.data())
def test_prioritize_properties(state: list[tuple[int, int]], data: st.DataObject) -> None:
    ss = [mk(3 + i, p, 0, False, extra=x) for i, (p, x) in enumerate(state)]
    chosen = data.draw(st.sampled_from(ss)).partition
    out = slots.prioritize(ss, chosen)
    new = {p: slots.priority_of(a) for p, a in out.items()}
    assert new[chosen] == max(new.values()) and new[chosen] >= 1
    for a in ss:
        assert out[a.partition] & ~OWNED == a.attributes & ~OWNED
        for b in ss:
            if chosen in (a.partition, b.partition):
                continue
            if a.priority > b.priority:
                assert new[a.partition] >= new[b.partition]
            if a.priority == b.priority:
                assert new[a.partition] == new[b.partition]
            if a.priority == 0:
                assert new[a.partition] == 0
            elif a.priority > 0:
                assert new[a.partition] >= 1
        if a.partition != chosen and a.priority > 0:
            assert new[a.partition] < new[chosen] or new[a.partition] == 1


# --- transitions ---------------------------------------------------------------------------


def fresh() -> list[Slot]:
    return [mk(3, 1, 0, True, "USR-A"), mk(4, 0, 0, False, "USR-B")]


def test_set_active_matches_flatcar_postinst() -> None:
    ss = fresh()
    t = slots.set_active(ss, 4, booted=3)
    assert pts(slots.apply(ss, t.changes)) == [(1, 0, True), (2, 1, False)]


def test_set_active_refuses_booted_slot_and_zero_tries() -> None:
    ss = fresh()
    with pytest.raises(SlotError, match=r"^partition 3 \(USR-A\) is the booted slot; set-active"):
        slots.set_active(ss, 3, booted=3)
    with pytest.raises(UsageError, match="--tries must be at least 1"):
        slots.set_active(ss, 4, tries=0)
    with pytest.raises(UsageError, match="tries must be between 0 and 15, not 16"):
        slots.set_active(ss, 4, tries=16)
    t = slots.set_active(ss, 4, tries=15, booted=3)
    assert pts(slots.apply(ss, t.changes)) == [(1, 0, True), (2, 15, False)]
    assert (t.action, t.target) == ("set-active", 4)


def test_set_active_force_puts_the_booted_slot_on_trial() -> None:
    """--force on the booted slot: it is no longer marked good and gets the tries; the other,
    good slot is the fallback."""
    ss = [mk(3, 2, 0, True, "USR-A"), mk(4, 1, 0, True, "USR-B")]
    t = slots.set_active(ss, 3, tries=2, booted=3, force=True)
    assert pts(slots.apply(ss, t.changes)) == [(2, 2, False), (1, 0, True)]


def test_set_active_without_a_fallback_before_is_not_guarded() -> None:
    """The guard keeps a fallback that exists; a disk that has none (A still on its first
    trial) may get a new image into B."""
    ss = [mk(3, 1, 1, False, "USR-A"), mk(4, 0, 0, False, "USR-B")]
    t = slots.set_active(ss, 4, booted=3)
    assert pts(slots.apply(ss, t.changes)) == [(1, 1, False), (2, 1, False)]


def test_set_active_refuses_to_remove_last_good_slot() -> None:
    ss = [mk(3, 1, 0, False, "USR-A"), mk(4, 2, 0, True, "USR-B")]
    with pytest.raises(SlotError, match="fall back"):
        slots.set_active(ss, 4, booted=3)
    t = slots.set_active(ss, 4, booted=3, force=True)
    assert pts(slots.apply(ss, t.changes))[1] == (2, 1, False)


def test_mark_good_matches_setgoodroot() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, False, "USR-B")]
    t = slots.mark_good(ss, 4)
    assert pts(slots.apply(ss, t.changes)) == [(1, 0, True), (2, 0, True)]
    assert (t.action, t.target) == ("mark-good", 4)


def test_mark_good_clears_tries_and_prioritizes() -> None:
    """Booted by hand into B while A is on top and B still has tries (``-S1 -T0``, then
    prioritize: B on top, A below it)."""
    ss = [mk(3, 2, 0, True, "USR-A"), mk(4, 1, 3, False, "USR-B", extra=1 << 57)]
    after = slots.apply(ss, slots.mark_good(ss, 4).changes)
    assert pts(after) == [(1, 0, True), (2, 0, True)]
    assert after[1].attributes & ~OWNED == 1 << 57


def test_mark_good_of_a_good_top_slot_changes_nothing() -> None:
    ss = [mk(3, 2, 0, True, "USR-A"), mk(4, 1, 0, True, "USR-B")]
    assert slots.mark_good(ss, 3).empty


def test_mark_bad_guard() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, True, "USR-B")]
    t = slots.mark_bad(ss, 4)
    assert pts(slots.apply(ss, t.changes)) == [(1, 0, True), (0, 0, False)]
    assert (t.action, t.target) == ("mark-bad", 4)
    only = slots.apply(ss, t.changes)
    with pytest.raises(SlotError, match="^refusing to mark USR-A bad: no other slot could boot$"):
        slots.mark_bad(only, 3)
    unnamed = [Slot(3, "", new_guid(), bits(1, 0, True))]
    with pytest.raises(SlotError, match="^refusing to mark 3 bad"):
        slots.mark_bad(unnamed, 3)
    with pytest.raises(UsageError, match="^partition 5 is not a slot$"):
        slots.mark_bad(ss, 5)
    assert slots.choose_next(slots.apply(only, slots.mark_bad(only, 3, force=True).changes)) is None


def test_rollback_rules() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, True, "USR-B")]
    t = slots.rollback(ss, 4, has_image=True)
    assert slots.choose_next(slots.apply(ss, t.changes)).partition == 3  # type: ignore[union-attr]
    never = fresh()
    with pytest.raises(SlotError, match="never booted successfully"):
        slots.rollback(never, 3, has_image=True)
    with pytest.raises(SlotError, match="holds no image"):
        slots.rollback(never, 3, has_image=False)
    forced = slots.apply(never, slots.rollback(never, 3, has_image=False, force=True).changes)
    assert pts(forced) == [(1, 0, True), (2, 1, False)]  # one try, then back to A


def test_resolve_part_specs() -> None:
    ss = fresh()
    assert slots.resolve(ss, "4").partition == 4
    assert slots.resolve(ss, "3").partition == 3
    assert slots.resolve(ss, "usr-b").partition == 4
    assert slots.resolve(ss, " USR-A ").partition == 3
    assert slots.resolve(ss, "b").partition == 4
    assert slots.resolve(ss, "A").partition == 3
    with pytest.raises(UsageError, match=r"^partition 9 is not a slot \(slots: 3=USR-A, 4=USR-B"):
        slots.resolve(ss, "9")
    for bad in ["C", "ROOT", ""]:
        with pytest.raises(UsageError, match=f"^no slot named {bad!r} \\(slots: 3=USR-A, 4=USR-B"):
            slots.resolve(ss, bad)
    with pytest.raises(UsageError, match=r"\(slots: 3=\?\)"):
        slots.resolve([Slot(3, "", new_guid(), 0)], "x")
    with pytest.raises(UsageError, match=r"\(slots: none\)"):
        slots.resolve([], "x")


# --- the safety property -------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["set-active", "next", "mark-good", "rollback", "mark-bad",
                         "make-unbootable", "prioritize"]),
        st.sampled_from([3, 4, 5]),
        st.integers(1, 3),
    ),
    max_size=30,
)  # fmt: skip
SLOT_STATE = st.tuples(st.integers(0, 15), st.integers(0, 15), st.booleans())


@st.composite
def start_states(draw: st.DrawFn) -> list[Slot]:
    """Two or three slots in any state that has a known-good fallback (a fresh Flatcar disk is
    one of them)."""
    states = draw(st.lists(SLOT_STATE, min_size=2, max_size=3))
    ss = [mk(3 + i, *x) for i, x in enumerate(states)]
    if not slots.has_fallback(ss):
        i = draw(st.integers(0, len(ss) - 1))
        ss[i] = mk(3 + i, draw(st.integers(1, 15)), states[i][1], True)
    return ss


@settings(max_examples=400, deadline=None)
@given(start_states(), OPS)
def test_no_sequence_leaves_no_bootable_slot_unless_marked_bad(
    start: list[Slot], ops: list[tuple[str, int, int]]
) -> None:
    """A machine that follows GRUB's choice on every boot and lets tools apply any mix of
    transitions (refusals are no-ops), from any state with a known-good fallback: until
    something is marked bad, a known-good fallback stays and every run of failing boots ends
    in it; marked bad or not, no refused-unless-forced transition leaves nothing to boot."""
    ss = start
    booted = (slots.choose_next(ss) or ss[0]).partition
    marked_bad = False
    for op, part, tries in ops:
        part = min(part, ss[-1].partition)
        before = ss
        try:
            if op == "next":
                chosen, t = slots.next_boot(ss)
                booted = chosen.partition
            elif op == "set-active":
                t = slots.set_active(ss, part, tries=tries, booted=booted)
            elif op == "mark-good":
                t = slots.mark_good(ss, booted)
            elif op == "rollback":
                t = slots.rollback(ss, booted, has_image=True)
            elif op == "make-unbootable":
                t = slots.make_unbootable(ss, part, booted=booted)
            elif op == "prioritize":
                t = slots.prioritize_transition(ss, part)
            else:
                t = slots.mark_bad(ss, part)
                marked_bad = True
        except SlotError:
            continue
        ss = slots.apply(ss, t.changes)
        if op != "next" and slots.choose_next(before) is not None:
            assert slots.choose_next(ss) is not None, f"{op} {part} left nothing to boot"
        if not marked_bad:
            assert slots.has_fallback(ss), f"{op} {part} took the last fallback"
            # and it stays bootable however many boots fail from here on
            trial = ss
            for _ in range(40):
                chosen, t = slots.next_boot(trial)
                trial = slots.apply(trial, t.changes)
            assert chosen.good


# --- the update flow's transition, kexec's try, roles --------------------------------------


def test_make_unbootable_before_overwriting_a_slot() -> None:
    """Bottlerocket's P0 T0 S0 before a slot is written; every other bit is kept."""
    ss = [mk(3, 2, 0, True, "USR-A"), mk(4, 1, 0, True, "USR-B", extra=1 << 57)]
    t = slots.make_unbootable(ss, 4, booted=3)
    after = slots.apply(ss, t.changes)
    assert pts(after) == [(2, 0, True), (0, 0, False)]
    assert after[1].attributes == 1 << 57
    assert t.action == "make-unbootable" and t.target == 4


@pytest.mark.parametrize("force", [False, True])
def test_make_unbootable_never_takes_the_booted_slot(force: bool) -> None:
    ss = [mk(3, 2, 0, True, "USR-A"), mk(4, 1, 0, True, "USR-B")]
    with pytest.raises(SlotError, match="booted slot"):
        slots.make_unbootable(ss, 3, booted=3, force=force)
    with pytest.raises(SlotError, match="booted slot is unknown"):
        slots.make_unbootable(ss, 4, booted=None, force=force)


def test_make_unbootable_is_guarded_like_the_others() -> None:
    # Booted from B on trial, A the only good slot: overwriting A would leave no fallback.
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, False, "USR-B")]
    with pytest.raises(SlotError, match="no other slot could boot"):
        slots.make_unbootable(ss, 3, booted=4)
    # B still has a try: bootable, but never proven; A is the last good one.
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 1, False, "USR-B")]
    with pytest.raises(SlotError, match="fall back"):
        slots.make_unbootable(ss, 3, booted=4)
    forced = slots.apply(ss, slots.make_unbootable(ss, 3, booted=4, force=True).changes)
    assert pts(forced) == [(0, 0, False), (2, 1, False)]


def test_consume_and_give_back_a_kexec_try() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 2, False, "USR-B")]
    consumed = slots.apply(ss, slots.consume_try(ss, ss[1]).changes)
    assert pts(consumed) == [(1, 0, True), (2, 1, False)]
    back = slots.apply(consumed, slots.give_back_try(consumed, consumed[1]).changes)
    assert back == ss
    # Only when nothing changed in between: a newer state is never overwritten.
    marked = slots.apply(consumed, slots.mark_good(consumed, 4).changes)
    assert slots.give_back_try(marked, consumed[1]).empty
    with pytest.raises(SlotError, match="changed while preparing"):
        slots.consume_try(marked, ss[1])
    good = [mk(3, 1, 0, True, "USR-A")]
    assert slots.consume_try(good, good[0]).empty  # a proven slot with tries 0: no write


def test_more_than_two_slots() -> None:
    """Three slots (GRUB's rule and prioritize take any number; ``other`` needs exactly one)."""
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 0, 0, False, "USR-B"), mk(5, 0, 0, False, "USR-C")]
    with pytest.raises(SlotError, match="expected exactly one slot besides partition 3, found 2"):
        slots.other_slot(ss, 3)
    with pytest.raises(SlotError, match="found 2"):
        slots.rollback(ss, 3, has_image=True)
    assert slots.resolve(ss, "c").partition == 5
    t = slots.set_active(ss, 5, booted=3)
    after = slots.apply(ss, t.changes)
    assert pts(after) == [(1, 0, True), (0, 0, False), (2, 1, False)]
    assert slots.choose_next(after) == after[2]
    with pytest.raises(SlotError, match="found 0"):
        slots.other_slot(ss[:1], 3)


def test_a_successful_slot_of_priority_zero_is_no_fallback() -> None:
    """C was successful once but is disabled (priority 0): GRUB never boots it, so it does not
    count as the fallback that lets A be overwritten while B is on trial."""
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 1, False, "USR-B"), mk(5, 0, 0, True, "USR-C")]
    assert not ss[2].good and not ss[2].bootable and slots.has_fallback(ss)
    assert not slots.has_fallback(ss[1:])
    with pytest.raises(SlotError, match="^refusing to make-unbootable: it would leave no slot"):
        slots.make_unbootable(ss, 3, booted=4)


@pytest.mark.parametrize(
    ("p", "t", "s", "bootable", "good"),
    [
        (0, 1, True, False, False),
        (1, 0, False, False, False),
        (1, 1, False, True, False),
        (1, 0, True, True, True),
        (15, 15, True, True, True),
    ],
)
def test_bootable_and_good(p: int, t: int, s: bool, bootable: bool, good: bool) -> None:
    slot = mk(3, p, t, s)
    assert (slot.bootable, slot.good) == (bootable, good)
    assert (slot.priority, slot.tries, slot.successful) == (p, t, s)


def test_resolve_roles() -> None:
    ss = fresh()
    assert slots.resolve(ss, "booted", booted=3).partition == 3
    assert slots.resolve(ss, "other", booted=3).partition == 4
    assert slots.resolve(ss, " Other ", booted=4).partition == 3
    with pytest.raises(UsageError, match="booted slot, which is unknown"):
        slots.resolve(ss, "other")


@pytest.mark.parametrize("label", ["USR-1", "USR-\n", "USR-é", "USR-"])
def test_a_label_names_a_letter_only_when_it_is_one(label: str) -> None:
    assert Slot(3, label, new_guid(), 0).letter is None


@pytest.mark.parametrize("tries", [1, 2, 3])
def test_both_slots_failing_is_bounded_by_the_tries(tries: int) -> None:
    """Every boot fails and nobody marks anything good: the trial slot gets exactly its tries,
    then GRUB boots the known-good slot on every boot after, never the trial slot again; with no
    good slot either, nothing boots after the tries (GRUB stops instead of looping)."""
    ss = slots.apply(fresh(), slots.set_active(fresh(), 4, tries=tries, booted=3).changes)
    booted = []
    for _ in range(tries + 10):
        chosen, t = slots.next_boot(ss)
        booted.append(chosen.partition)
        ss = slots.apply(ss, t.changes)
    assert booted == [4] * tries + [3] * 10
    nothing_good = [mk(3, 1, 0, False, "USR-A"), mk(4, 2, tries, False, "USR-B")]
    for _ in range(tries):
        nothing_good = slots.apply(nothing_good, slots.next_boot(nothing_good)[1].changes)
    with pytest.raises(NoBootableSlot):
        slots.next_boot(nothing_good)


# --- what each decision is called, and what each refusal says --------------------------------


def test_every_transition_names_its_action_and_target() -> None:
    """The action and target go into the JSON contract (``action``, ``target``) and the log."""
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 2, False, "USR-B")]
    b = ss[1]
    consumed = slots.apply(ss, slots.consume_try(ss, b).changes)
    cases = {
        ("next", 4): slots.next_boot(ss)[1],
        ("set-active", 4): slots.set_active(ss, 4, booted=3, force=True),
        ("mark-good", 4): slots.mark_good(ss, 4),
        ("mark-bad", 4): slots.mark_bad(ss, 4),
        ("rollback", 3): slots.rollback(ss, 4, has_image=True),
        ("prioritize", 3): slots.prioritize_transition(ss, 3),
        ("make-unbootable", 4): slots.make_unbootable(ss, 4, booted=3),
        ("kexec", 4): slots.consume_try(ss, b),
        ("give-back", 4): slots.give_back_try(consumed, consumed[1]),
    }
    for (action, target), t in cases.items():
        assert (t.action, t.target) == (action, target)
        assert not t.empty, action
    stale = slots.give_back_try(ss, consumed[1])  # B changed since: nothing given back
    assert (stale.action, stale.target, dict(stale.changes)) == ("give-back", 4, {})
    assert slots.give_back_try(consumed, consumed[1]).changes == {4: b.attributes}


def _refusal(call: object) -> tuple[str, str, str | None]:
    assert callable(call)
    with pytest.raises((SlotError, UsageError, NoBootableSlot)) as info:
        call()
    e = info.value
    assert isinstance(e, UsageError | SlotError | NoBootableSlot)
    return type(e).__name__, e.message, e.hint


ONE_TRIAL = [mk(3, 1, 0, False, "USR-A"), mk(4, 2, 1, False, "USR-B")]
A_GOOD_B_TRIAL = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 1, False, "USR-B")]
UNNAMED = [
    Slot(3, "", new_guid(), bits(1, 0, True)),
    Slot(4, "", new_guid(), bits(0, 0, False)),
]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda: slots.next_boot([mk(3, 0, 1, True)]),
            ("NoBootableSlot", "no bootable slot: every slot has priority 0, or no tries left "
             "and never booted well", None),
        ),
        (
            lambda: slots.set_active(ONE_TRIAL, 3, booted=3),
            ("SlotError", "partition 3 (USR-A) is the booted slot; set-active is for the slot "
             "that received a new image", "use mark-good to keep the booted slot"),
        ),
        (
            lambda: slots.set_active(ONE_TRIAL, 4, tries=0),
            ("UsageError", "--tries must be at least 1: a slot with no tries never boots", None),
        ),
        (
            lambda: slots.set_active(A_GOOD_B_TRIAL, 3, booted=4),
            ("SlotError", "refusing to set-active: it would leave no slot marked good to fall "
             "back to", "mark the booted slot good first, or pass --force"),
        ),
        (
            lambda: slots.mark_bad(A_GOOD_B_TRIAL[:1], 3),
            ("SlotError", "refusing to mark USR-A bad: no other slot could boot",
             "pass --force if the disk is meant to stop booting"),
        ),
        (
            lambda: slots.make_unbootable(A_GOOD_B_TRIAL, 3, booted=None),
            ("SlotError", "refusing to make USR-A unbootable: the booted slot is unknown",
             "pass --booted PART for an image file"),
        ),
        (
            lambda: slots.make_unbootable(UNNAMED, 3, booted=None),
            ("SlotError", "refusing to make 3 unbootable: the booted slot is unknown",
             "pass --booted PART for an image file"),
        ),
        (
            lambda: slots.make_unbootable(A_GOOD_B_TRIAL, 4, booted=4),
            ("SlotError", "USR-B is the booted slot; its image is in use and cannot be replaced",
             None),
        ),
        (
            lambda: slots.make_unbootable(UNNAMED, 4, booted=4),
            ("SlotError", "4 is the booted slot; its image is in use and cannot be replaced",
             None),
        ),
        (
            lambda: slots.make_unbootable([mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, False)], 3,
                                          booted=4),
            ("SlotError", "refusing to make USR-A unbootable: no other slot could boot",
             "pass --force if the disk is meant to stop booting"),
        ),
        (
            lambda: slots.make_unbootable(UNNAMED, 3, booted=4),
            ("SlotError", "refusing to make 3 unbootable: no other slot could boot",
             "pass --force if the disk is meant to stop booting"),
        ),
        (
            lambda: slots.make_unbootable(A_GOOD_B_TRIAL, 3, booted=4),
            ("SlotError", "refusing to make-unbootable: it would leave no slot marked good to "
             "fall back to", "mark the booted slot good first, or pass --force"),
        ),
        (
            lambda: slots.rollback(ONE_TRIAL, 4, has_image=False),
            ("SlotError", "USR-A holds no image", "pass --force to try it anyway"),
        ),
        (
            lambda: slots.rollback(UNNAMED, 3, has_image=False),
            ("SlotError", "4 holds no image", "pass --force to try it anyway"),
        ),
        (
            lambda: slots.rollback(ONE_TRIAL, 4, has_image=True),
            ("SlotError", "USR-A was never booted successfully", "pass --force to give it one try"),
        ),
        (
            lambda: slots.resolve(ONE_TRIAL, "other"),
            ("UsageError", "slot 'other' needs the booted slot, which is unknown",
             "pass --booted PART for an image file"),
        ),
        (
            lambda: slots.resolve(UNNAMED, "xxxx"),
            ("UsageError", "no slot named 'xxxx' (slots: 3=?, 4=?)", None),
        ),
        (
            lambda: slots.other_slot(ONE_TRIAL[:1], 3),
            ("SlotError", "expected exactly one slot besides partition 3, found 0", None),
        ),
        (
            lambda: slots.prioritize(ONE_TRIAL, 3, max_priority=0),
            ("UsageError", "max priority must be at least 1", None),
        ),
        (
            lambda: slots.prioritize(ONE_TRIAL, 3, max_priority=16),
            ("UsageError", "max priority must be between 0 and 15, not 16", None),
        ),
        (
            lambda: slots.consume_try(ONE_TRIAL, mk(4, 2, 2, False, "USR-B")),
            ("SlotError", "the A/B state of USR-B changed while preparing the kexec", None),
        ),
    ],
)  # fmt: skip
def test_refusals_say_what_and_what_to_do(
    call: object, expected: tuple[str, str, str | None]
) -> None:
    assert _refusal(call) == expected


def test_prioritize_with_a_maximum_of_one_puts_every_bootable_slot_at_one() -> None:
    ss = [mk(3, 3, 0, True), mk(4, 2, 0, True), mk(5, 0, 0, False)]
    out = slots.prioritize(ss, 4, max_priority=1)
    assert [slots.priority_of(out[s.partition]) for s in ss] == [1, 1, 0]


def test_mark_bad_and_make_unbootable_clear_tries_too() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 3, True, "USR-B")]
    assert pts(slots.apply(ss, slots.mark_bad(ss, 4).changes)) == [(1, 0, True), (0, 0, False)]
    made = slots.make_unbootable(ss, 4, booted=3)
    assert pts(slots.apply(ss, made.changes)) == [(1, 0, True), (0, 0, False)]


def test_forced_make_unbootable_may_leave_nothing_to_boot() -> None:
    """Booted from A, which used its one try and is not marked good yet: forcing B unbootable
    leaves no slot GRUB would boot, as asked."""
    ss = [mk(3, 1, 0, False, "USR-A"), mk(4, 2, 1, False, "USR-B")]
    t = slots.make_unbootable(ss, 4, booted=3, force=True)
    assert slots.choose_next(slots.apply(ss, t.changes)) is None


def test_rollback_to_a_good_slot_keeps_its_tries() -> None:
    """A proven slot is prioritized as it is: tries 0 stays 0 (only a forced never-good slot
    gets one try)."""
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 0, True, "USR-B")]
    after = slots.apply(ss, slots.rollback(ss, 4, has_image=True).changes)
    assert pts(after) == [(2, 0, True), (1, 0, True)]
    trial = [mk(3, 1, 2, False, "USR-A"), mk(4, 2, 0, True, "USR-B")]
    forced = slots.apply(trial, slots.rollback(trial, 4, has_image=True, force=True).changes)
    assert pts(forced) == [(2, 2, False), (1, 0, True)]  # tries left are kept, not reset


def test_give_back_never_goes_past_fifteen_tries() -> None:
    ss = [mk(3, 1, 0, True, "USR-A"), mk(4, 2, 15, False, "USR-B")]
    assert slots.give_back_try(ss, ss[1]).empty


def test_slots_of_keeps_each_entry_field() -> None:
    @dataclass(frozen=True)
    class Entry:
        number: int
        name: str
        unique_guid: Guid
        type_guid: Guid
        attributes: int

    usr = Guid("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")
    g = [new_guid() for _ in range(3)]
    entries = [Entry(1, "EFI", g[0], new_guid(), 5), Entry(3, "USR-A", g[1], usr, 7),
               Entry(4, "USR-B", g[2], usr, 9)]  # fmt: skip
    assert slots.slots_of(entries) == (Slot(3, "USR-A", g[1], 7), Slot(4, "USR-B", g[2], 9))
    assert slots.slots_of(entries, type_guid=entries[0].type_guid) == (Slot(1, "EFI", g[0], 5),)

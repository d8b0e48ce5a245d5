"""Maintenance windows (zoneinfo, daylight saving time), rollout waves, the wave seed, jitter.

Expected instants are worked out by hand from the zone's published offsets (Europe/Berlin: CET
+01:00, CEST +02:00 from the last Sunday of March 02:00, back the last Sunday of October 03:00)
and PEP 495 (fold=0 takes the offset before a transition)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from updater.agent import schedule
from updater.agent.schedule import Wave, parse_waves, parse_window, wave_start
from updater.errors import DataError

BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


WEEKEND = parse_window({"days": ["Sat", "sunday"], "start": "23:30", "minutes": 60})


@pytest.mark.parametrize(
    ("now", "is_open"),
    [
        ("2024-06-15 21:29:59", False),  # Sat 23:29:59 CEST
        ("2024-06-15 21:30:00", True),  # Sat 23:30 CEST
        ("2024-06-15 22:15:00", True),  # Sun 00:15 CEST: Saturday's window runs past midnight
        ("2024-06-15 22:30:00", False),  # Sun 00:30: 60 minutes are over
        ("2024-06-16 21:45:00", True),  # Sun 23:45
        ("2024-06-17 21:45:00", False),  # Mon 23:45
    ],
)
def test_window_open_in_local_time(now: str, is_open: bool) -> None:
    assert schedule.window_open((WEEKEND,), utc(now), BERLIN) is is_open


def test_next_opening() -> None:
    tuesday = utc("2024-06-11 10:00:00")
    assert schedule.next_opening((WEEKEND,), tuesday, BERLIN) == utc("2024-06-15 21:30:00")
    inside = utc("2024-06-15 21:40:00")
    assert schedule.next_opening((WEEKEND,), inside, BERLIN) == inside
    assert schedule.next_opening((), tuesday, BERLIN) == tuesday
    assert schedule.window_open((), tuesday, BERLIN)


def test_window_across_spring_forward() -> None:
    """02:30 does not exist on 2024-03-31 in Berlin: fold=0 reads it with CET (+01:00)."""
    w = parse_window({"days": ["Sun"], "start": "02:30", "minutes": 30})
    start = utc("2024-03-31 01:30:00")
    assert schedule.next_opening((w,), utc("2024-03-30 12:00:00"), BERLIN) == start
    assert schedule.window_open((w,), start + 29 * 60, BERLIN)
    assert not schedule.window_open((w,), start + 30 * 60, BERLIN)


def test_window_across_fall_back() -> None:
    """02:30 happens twice on 2024-10-27: the first one (CEST, +02:00) opens the window, and
    its length is real time (60 minutes), not wall-clock time."""
    w = parse_window({"days": ["Sun"], "start": "02:30", "minutes": 60})
    start = utc("2024-10-27 00:30:00")
    assert schedule.next_opening((w,), utc("2024-10-26 12:00:00"), BERLIN) == start
    assert schedule.window_open((w,), utc("2024-10-27 01:29:00"), BERLIN)
    assert not schedule.window_open((w,), utc("2024-10-27 01:30:00"), BERLIN)


def test_week_long_window_is_always_open() -> None:
    w = parse_window({"days": ["Mon"], "start": "00:00", "minutes": schedule.MAX_WINDOW_MINUTES})
    for day in range(10, 18):
        assert schedule.window_open((w,), utc(f"2024-06-{day} 12:00:00"), BERLIN)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Sat 02:00", "must be a table"),
        ({"days": [], "start": "02:00", "minutes": 5}, "non-empty list"),
        ({"days": ["Caturday"], "start": "02:00", "minutes": 5}, "is not a day"),
        ({"days": ["Sat"], "start": "2:00", "minutes": 5}, "HH:MM"),
        ({"days": ["Sat"], "start": "24:00", "minutes": 5}, "HH:MM"),
        ({"days": ["Sat"], "start": "02:00", "minutes": 0}, "minutes must be"),
        ({"days": ["Sat"], "start": "02:00", "minutes": 10081}, "minutes must be"),
        ({"days": ["Sat"], "start": "02:00", "minutes": True}, "minutes must be"),
        ({"days": ["Sat"], "start": "02:00", "minutes": 5, "length": 1}, "unknown window key"),
    ],
)
def test_bad_windows(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(value)


WAVES = [[512, "2030-01-01T00:00:00Z"], [1024, "2030-01-02T00:00:00+01:00"],
         [2048, "2030-01-03T00:00:00Z"]]  # fmt: skip


def test_waves_parse_and_order() -> None:
    waves = parse_waves(WAVES)
    assert waves == (
        Wave(512, utc("2030-01-01 00:00:00")),
        Wave(1024, utc("2030-01-01 23:00:00")),
        Wave(2048, utc("2030-01-03 00:00:00")),
    )
    assert schedule.waves_json(waves)[1] == [1024, "2030-01-01T23:00:00Z"]


@pytest.mark.parametrize(
    ("seed", "start"),
    [(0, "2030-01-01 00:00:00"), (511, "2030-01-01 00:00:00"), (512, "2030-01-01 23:00:00"),
     (1023, "2030-01-01 23:00:00"), (1024, "2030-01-03 00:00:00"),
     (2047, "2030-01-03 00:00:00")],
)  # fmt: skip
def test_wave_of_a_seed(seed: int, start: str) -> None:
    assert wave_start(parse_waves(WAVES), seed) == utc(start)


def test_seed_above_every_bound_waits_for_the_last_wave_and_no_waves_means_now() -> None:
    waves = parse_waves([[100, "2030-01-01T00:00:00Z"], [200, "2030-02-01T00:00:00Z"]])
    assert wave_start(waves, 1500) == utc("2030-02-01 00:00:00")
    assert wave_start((), 1500) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"512": "x"}, "must be a list"),
        ([[512]], "is not a \\[seed_bound, start\\] pair"),
        ([[0, "2030-01-01T00:00:00Z"]], "not a whole number 1..2048"),
        ([[2049, "2030-01-01T00:00:00Z"]], "not a whole number 1..2048"),
        ([[True, "2030-01-01T00:00:00Z"]], "not a whole number"),
        ([[512, "2030-01-01"]], "without a date, time or offset"),
        ([[512, "2030-01-01T00:00:00"]], "without a date, time or offset"),
        ([[512, "tomorrow"]], "not an RFC 3339 time"),
        ([[512, "2030-01-02T00:00:00Z"], [512, "2030-01-03T00:00:00Z"]], "increasing bounds"),
        ([[512, "2030-01-02T00:00:00Z"], [600, "2030-01-01T00:00:00Z"]], "non-decreasing"),
        ([[i + 1, "2030-01-01T00:00:00Z"] for i in range(65)], "at most 64"),
    ],
)
def test_bad_waves_are_data_errors(raw: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_waves(raw)


MACHINE_ID = "0123456789abcdef0123456789abcdef"


def test_seed_is_the_app_specific_hmac_of_the_machine_id() -> None:
    """sd_id128_get_machine_app_specific's construction: HMAC-SHA256 keyed with the machine id's
    16 bytes over the application id's 16 bytes; the seed is its first two bytes mod 2048."""
    digest = hmac.new(bytes.fromhex(MACHINE_ID), schedule.WAVE_APP_ID.bytes, hashlib.sha256)
    assert schedule.seed_of(MACHINE_ID + "\n") == int.from_bytes(digest.digest()[:2]) % 2048
    assert schedule.seed_of(MACHINE_ID.upper()) == schedule.seed_of(MACHINE_ID)
    seeds = {schedule.seed_of(f"{i:032x}") for i in range(4000)}
    assert min(seeds) >= 0 and max(seeds) <= 2047 and len(seeds) > 1500


def test_holder_id_does_not_reveal_the_machine_id() -> None:
    holder = schedule.holder_id(MACHINE_ID)
    digest = hmac.new(bytes.fromhex(MACHINE_ID), schedule.HOLDER_APP_ID.bytes, hashlib.sha256)
    assert holder == digest.digest()[:16].hex() and holder != MACHINE_ID


@pytest.mark.parametrize("bad", ["", "xyz", MACHINE_ID[:-1], MACHINE_ID + "0", "g" * 32])
def test_bad_machine_ids(bad: str) -> None:
    with pytest.raises(DataError, match="machine id"):
        schedule.seed_of(bad)


def test_jitter_spreads_within_bounds() -> None:
    assert schedule.jittered(1000, 0.1, 0.0) == pytest.approx(900)
    assert schedule.jittered(1000, 0.1, 0.5) == pytest.approx(1000)
    assert schedule.jittered(1000, 0.1, 0.999999) == pytest.approx(1100, abs=0.01)
    assert schedule.jittered(1000, 0.0, 0.7) == 1000
    with pytest.raises(ValueError):
        schedule.jittered(1000, 0.1, 1.0)


def test_window_as_toml_round_trips() -> None:
    w = parse_window({"days": [" MONDAY ", "sun", "Wed"], "start": "02:05", "minutes": 30})
    assert w == schedule.Window((0, 2, 6), w.start, 30)
    assert w.as_toml() == {"days": ["Mon", "Wed", "Sun"], "start": "02:05", "minutes": 30}
    assert parse_window(w.as_toml()) == w
    assert parse_window({"days": ["Sat"], "start": "23:59", "minutes": 10080}).minutes == 10080


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Sat", 'each window must be a table {days = [...], start = "HH:MM", minutes = N}'),
        ({"days": ["Sat"], "start": "02:00", "minutes": 5, "b": 1, "a": 2},
         "unknown window key(s) a, b"),
        ({"days": "Sat", "start": "02:00", "minutes": 5},
         'window days must be a non-empty list such as ["Mon", "Thu"]'),
        ({"days": ["Sat", 1], "start": "02:00", "minutes": 5},
         'window days must be a non-empty list such as ["Mon", "Thu"]'),
        ({"days": ["Caturday"], "start": "02:00", "minutes": 5},
         "'Caturday' is not a day (Mon, Tue, ... Sun)"),
        ({"days": ["Sat"], "start": 200, "minutes": 5},
         'window start must be "HH:MM" (24-hour), not 200'),
        ({"days": ["Sat"], "start": "02:60", "minutes": 5},
         "window start must be \"HH:MM\" (24-hour), not '02:60'"),
        ({"days": ["Sat"], "start": "02:00", "minutes": "5"},
         "window minutes must be 1 to 10080, not '5'"),
        ({"days": ["Sat"], "start": "02:00"}, "window minutes must be 1 to 10080, not None"),
    ],
)  # fmt: skip
def test_bad_window_messages(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_window(value)
    assert str(info.value) == message


def test_next_opening_is_now_without_windows_or_inside_one() -> None:
    now = utc("2024-06-15 21:45:00")  # inside Saturday's 23:30 CEST window
    assert schedule.next_opening((), now, BERLIN) == now
    assert schedule.next_opening((WEEKEND,), now, BERLIN) == now
    monday = utc("2024-06-17 12:00:00")
    assert schedule.next_opening((WEEKEND,), monday, BERLIN) == utc("2024-06-22 21:30:00")
    assert not schedule.window_open((WEEKEND,), monday, BERLIN)
    assert schedule.window_open((), monday, BERLIN)


def test_a_week_long_window_that_opened_eight_days_ago_is_closed_now() -> None:
    w = parse_window({"days": ["Mon"], "start": "00:00", "minutes": 10080})
    # opened Mon 2024-06-10 00:00 CEST, closes Mon 2024-06-17 00:00 CEST, opens again at once
    assert schedule.window_open((w,), utc("2024-06-16 21:59:59"), BERLIN)
    assert schedule.window_open((w,), utc("2024-06-16 22:00:00"), BERLIN)
    short = parse_window({"days": ["Mon"], "start": "00:00", "minutes": 10079})
    assert not schedule.window_open((short,), utc("2024-06-16 21:59:30"), BERLIN)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", "2030-01-01 00:00:00"),
        ("2030-01-01t00:00:00z", "2030-01-01 00:00:00"),
        ("2030-01-01T02:30:00+02:30", "2030-01-01 00:00:00"),
        ("2030-01-01 00:00:00Z", None),
    ],
)
def test_rfc3339(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="RFC 3339 time without a date, time or offset"):
            schedule.parse_rfc3339(text)
        return
    assert schedule.parse_rfc3339(text) == utc(expected)


@pytest.mark.parametrize("bad", ["2030-01-01T00:00:00.000000000000000000000Z", 5, None, ""])
def test_rfc3339_refuses_what_is_not_a_time(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        schedule.parse_rfc3339(bad)  # type: ignore[arg-type]
    assert str(info.value) == f"not an RFC 3339 time: {bad!r}"


def test_rfc3339_rendering() -> None:
    assert schedule.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert schedule.rfc3339(utc("2030-01-01 23:00:00") + 0.75) == "2030-01-01T23:00:00Z"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x", "release waves must be a list of at most 64 [bound, time] pairs"),
        ([5], "release wave 5 is not a [seed_bound, start] pair"),
        ([[1, 2, 3]], "release wave [1, 2, 3] is not a [seed_bound, start] pair"),
        ([["1", "2030-01-01T00:00:00Z"]], "release wave bound '1' is not a whole number 1..2048"),
        ([[1, "x"]], "release wave start: not an RFC 3339 time: 'x'"),
        ([[9, "2030-01-02T00:00:00Z"], [8, "2030-01-03T00:00:00Z"]],
         "release waves must have increasing bounds and non-decreasing starts"),
    ],
)  # fmt: skip
def test_bad_wave_messages(raw: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        parse_waves(raw)
    assert info.value.message == message


def test_wave_limits_themselves_are_allowed() -> None:
    same = "2030-01-01T00:00:00Z"
    waves = parse_waves([[1, same], (2048, same)])
    assert waves == (Wave(1, utc("2030-01-01 00:00:00")), Wave(2048, utc("2030-01-01 00:00:00")))
    assert len(parse_waves([[i + 1, same] for i in range(64)])) == 64
    assert wave_start(waves, 0) == waves[0].start and wave_start(waves, 1) == waves[1].start


def test_machine_id_message() -> None:
    with pytest.raises(DataError) as info:
        schedule.holder_id("nope")
    assert info.value.message == "the machine id is not 32 hexadecimal digits (see machine-id(5))"


@pytest.mark.parametrize(
    ("interval", "fraction"), [(1000, -0.1), (1000, 1.0), (float("inf"), 0.5), (float("nan"), 0)]
)
def test_jitter_refusals(interval: float, fraction: float) -> None:
    with pytest.raises(ValueError, match=r"^fraction must be in \[0, 1\) and interval finite$"):
        schedule.jittered(interval, 0.1, fraction)


def test_a_one_minute_window() -> None:
    window = parse_window({"days": ["Mon"], "start": "03:00", "minutes": 1})
    assert window.minutes == 1


def test_rfc3339_length_limit_is_40_characters() -> None:
    """Python reads any number of fraction digits; 40 characters are read, 41 refused."""
    forty = "2030-01-01T02:00:00.12345678901234+01:00"
    assert len(forty) == 40
    assert schedule.parse_rfc3339(forty) == datetime(2030, 1, 1, 1, 0, 0, 123456, UTC).timestamp()
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        schedule.parse_rfc3339(forty.replace(".1", ".01"))


def test_a_seed_past_three_bounds_waits_for_the_last_wave() -> None:
    waves = (Wave(10, 100.0), Wave(20, 200.0), Wave(30, 300.0))
    assert wave_start(waves, 2047) == 300.0
    assert [wave_start(waves, s) for s in (0, 10, 20)] == [100.0, 200.0, 300.0]

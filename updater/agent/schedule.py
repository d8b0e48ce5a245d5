"""When the agent may act: maintenance windows, rollout waves, the wave seed, poll jitter.

Pure arithmetic: callers pass ``now`` (seconds since the epoch), the time zone, the machine id's
text and a random fraction, so every answer is exact and testable. Nothing here reads a clock, a
file or a random source, and nothing decides what the agent does with the answers
(``updater.agent.machine`` does).

- A maintenance window is a local wall-clock start on some weekdays and a length in minutes of
  real time (Zincati's ``[[updates.periodic.window]]``: days, start time, length). On a day when
  the local start does not exist or exists twice (daylight saving time), the start is the first
  instant the zone maps it to (``fold=0``), as zoneinfo resolves it.
- Rollout waves are Bottlerocket's: each machine has a seed in 0..2047; a release lists waves as
  ``(seed bound, start time)`` with increasing bounds; a machine may take the release from the
  start of the first wave whose bound is above its seed. A seed above every bound waits for the
  last wave; a release without waves is for everyone at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from updater.errors import DataError
from updater.guid import Guid
from updater.records import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_WINDOW_MINUTES = 7 * 24 * 60  # a week: longer would just mean "always"

SEEDS = 2048  # Bottlerocket's seed range, 0..2047
MAX_WAVES = 64
# App-specific ids derived from /etc/machine-id, as sd_id128_get_machine_app_specific() does
# (HMAC-SHA256 keyed with the machine id over an application id), so that neither the seed nor
# the lock holder id reveals the machine id itself.
WAVE_APP_ID = Guid("b7c4e1d2-5a3f-4e8b-9c6d-0f1e2a3b4c5d")
HOLDER_APP_ID = Guid("3e9a7c51-8d24-4b6f-a0e3-5c7d9b1f2a48")


@dataclass(frozen=True)
class Window:
    """Open on ``days`` (0 = Monday) from the local ``start`` for ``minutes`` minutes."""

    days: tuple[int, ...]
    start: time
    minutes: int

    def as_toml(self) -> dict[str, object]:
        return {
            "days": [DAYS[d].capitalize() for d in self.days],
            "start": self.start.strftime("%H:%M"),
            "minutes": self.minutes,
        }


def parse_day(text: str) -> int:
    low = text.strip().lower()
    for names in (DAYS, _FULL_DAYS):
        if low in names:
            return names.index(low)
    raise ValueError(f"{text!r} is not a day (Mon, Tue, ... Sun)")


_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def parse_window(value: object) -> Window:
    """``{days = ["Sat", "Sun"], start = "23:30", minutes = 60}``; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('each window must be a table {days = [...], start = "HH:MM", minutes = N}')
    unknown = set(value) - {"days", "start", "minutes"}
    if unknown:
        raise ValueError(f"unknown window key(s) {', '.join(sorted(unknown))}")
    days = value.get("days")
    if not isinstance(days, list) or not days or not all(isinstance(d, str) for d in days):
        raise ValueError("window days must be a non-empty list such as [\"Mon\", \"Thu\"]")
    start = value.get("start")
    match = _HHMM.fullmatch(start) if isinstance(start, str) else None
    if match is None:
        raise ValueError(f"window start must be \"HH:MM\" (24-hour), not {start!r}")
    minutes = value.get("minutes")
    if (
        not isinstance(minutes, int)
        or isinstance(minutes, bool)
        or not 1 <= minutes <= MAX_WINDOW_MINUTES
    ):
        raise ValueError(f"window minutes must be 1 to {MAX_WINDOW_MINUTES}, not {minutes!r}")
    return Window(
        tuple(sorted({parse_day(d) for d in days})),
        time(int(match.group(1)), int(match.group(2))),
        minutes,
    )


def _openings(window: Window, around: date, zone: tzinfo) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of the window's openings from 8 days before ``around`` to
    8 days after: a window of up to a week that opened earlier may still be open."""
    out = []
    for offset in range(-8, 9):
        day = around + timedelta(days=offset)
        if day.weekday() in window.days:
            start = datetime.combine(day, window.start, tzinfo=zone).timestamp()
            out.append((start, start + window.minutes * 60))
    return out


def window_open(windows: Sequence[Window], now: float, zone: tzinfo) -> bool:
    """No windows: always open."""
    if not windows:
        return True
    today = datetime.fromtimestamp(now, zone).date()
    return any(s <= now < e for w in windows for s, e in _openings(w, today, zone))


def next_opening(windows: Sequence[Window], now: float, zone: tzinfo) -> float | None:
    """When a window is next open: ``now`` if one is, else the earliest start after ``now``
    (None only without windows... which are always open, so never None for a non-empty list)."""
    if window_open(windows, now, zone):
        return now
    today = datetime.fromtimestamp(now, zone).date()
    starts = [s for w in windows for s, _ in _openings(w, today, zone) if s > now]
    return min(starts) if starts else None


# ------------------------------------------------------------------------------------ waves


@dataclass(frozen=True)
class Wave:
    bound: int  # machines with a seed below it (and not below an earlier bound) are in it
    start: float  # epoch seconds


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 date-time with an explicit offset (``Z`` or ``+hh:mm``), as epoch seconds."""
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None or "T" not in text.upper():
        raise ValueError(f"RFC 3339 time without a date, time or offset: {text!r}")
    return value.timestamp()


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_waves(raw: object) -> tuple[Wave, ...]:
    """The ``waves`` of a release's signed custom metadata: ``[[seed_bound, "RFC 3339"], ...]``
    with bounds strictly increasing within 1..2048 and starts not decreasing. Anything else is a
    DataError: the metadata is signed, but a broken rollout plan must not be half applied."""
    if not isinstance(raw, list) or len(raw) > MAX_WAVES:
        raise DataError(f"release waves must be a list of at most {MAX_WAVES} [bound, time] pairs")
    waves: list[Wave] = []
    for item in raw:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise DataError(f"release wave {item!r} is not a [seed_bound, start] pair")
        bound, start = item
        if not isinstance(bound, int) or isinstance(bound, bool) or not 1 <= bound <= SEEDS:
            raise DataError(f"release wave bound {bound!r} is not a whole number 1..{SEEDS}")
        try:
            when = parse_rfc3339(start)
        except ValueError as exc:
            raise DataError(f"release wave start: {exc}") from None
        if waves and (bound <= waves[-1].bound or when < waves[-1].start):
            raise DataError("release waves must have increasing bounds and non-decreasing starts")
        waves.append(Wave(bound, when))
    return tuple(waves)


def waves_json(waves: Sequence[Wave]) -> list[list[object]]:
    return [[w.bound, rfc3339(w.start)] for w in waves]


def wave_start(waves: Sequence[Wave], seed: int) -> float | None:
    """When a machine with ``seed`` may take the release; None: at once (no waves)."""
    if not waves:
        return None
    for wave in waves:
        if seed < wave.bound:
            return wave.start
    return waves[-1].start


def _app_specific(machine_id: str, app: Guid) -> bytes:
    text = machine_id.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{32}", text):
        raise DataError("the machine id is not 32 hexadecimal digits (see machine-id(5))")
    return hmac.new(bytes.fromhex(text), app.bytes, hashlib.sha256).digest()


def seed_of(machine_id: str) -> int:
    """The machine's wave seed, 0..2047, stable for its machine id. 2048 divides 2**16, so the
    two bytes taken modulo 2048 are uniform."""
    return int.from_bytes(_app_specific(machine_id, WAVE_APP_ID)[:2], "big") % SEEDS


def holder_id(machine_id: str) -> str:
    """The machine's lock holder id: 32 hex digits, app-specific (Zincati does the same)."""
    return _app_specific(machine_id, HOLDER_APP_ID)[:16].hex()


def jittered(interval: float, jitter: float, fraction: float) -> float:
    """``interval`` spread by ``jitter`` (0.1: +-10%) with ``fraction`` drawn from [0, 1)."""
    if not 0 <= fraction < 1 or not math.isfinite(interval):
        raise ValueError("fraction must be in [0, 1) and interval finite")
    return interval * (1 - jitter + 2 * jitter * fraction)

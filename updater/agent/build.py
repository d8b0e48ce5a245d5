"""Put an agent together from the configuration: its policy (time zone, wave seed), its reboot
lock, health checks, store and clock. Reads the few files that takes (``/etc/machine-id``, the
time zone database); makes no decision and starts nothing.
"""

from __future__ import annotations

import threading
import zoneinfo
from datetime import UTC, tzinfo
from pathlib import Path

from updater import pin
from updater.agent import schedule
from updater.agent.health import FirstBootCheck, HealthChecks
from updater.agent.locking import reboot_lock
from updater.agent.machine import Policy
from updater.agent.runner import Agent, Clock, SystemClock
from updater.agent.seam import System
from updater.agent.store import Store
from updater.config import Config, LockBackend
from updater.errors import DataError, DeviceError, UsageError

LOCALTIME = Path("/etc/localtime")


def zone(name: str, localtime: Path = LOCALTIME) -> tzinfo:
    """``localtime``: the machine's zone (/etc/localtime; UTC when it has none), else by name."""
    try:
        if name != "localtime":
            return zoneinfo.ZoneInfo(name)
        if not localtime.exists():
            return UTC
        target = str(localtime.resolve())
        if "/zoneinfo/" in target:  # a link into the database names the zone (DST rules kept)
            return zoneinfo.ZoneInfo(target.split("/zoneinfo/", 1)[1])
        with localtime.open("rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise UsageError(f"[agent] timezone {name!r}: no such time zone here ({exc})") from None


def machine_id(path: str) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", errors="replace").strip()
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read the machine id: {exc.strerror}") from None
    try:
        schedule.seed_of(text)
    except DataError as exc:
        raise DataError(f"{path}: {exc.message}") from None
    return text


def policy(cfg: Config, seed: int) -> Policy:
    a = cfg.agent
    return Policy(
        interval=a.interval,
        jitter=a.jitter,
        strategy=a.reboot,
        windows=a.windows,
        zone=zone(a.timezone),
        locking=cfg.lock.backend is not LockBackend.NONE,
        retry=cfg.lock.retry,
        health_deadline=cfg.health.deadline,
        seed=seed,
    )


def agent(cfg: Config, system: System, clock: Clock | None = None,
          stop: threading.Event | None = None,
          first_boot: FirstBootCheck | None = None) -> Agent:  # fmt: skip
    """The agent; ``first_boot`` runs the first-boot-of-slot hooks before the health checks."""
    stop = stop or threading.Event()
    clock = clock or SystemClock(stop)
    mid = machine_id(cfg.agent.machine_id_file)
    holder = cfg.lock.id or schedule.holder_id(mid)
    return Agent(
        system=system,
        store=Store(cfg.update.state_dir),
        policy=policy(cfg, schedule.seed_of(mid)),
        channel=cfg.agent.channel or cfg.update.channel,
        pin=cfg.agent.version or None,
        lock=reboot_lock(cfg.lock, holder),
        health=HealthChecks(cfg.health, clock, first_boot),
        clock=clock,
        stop=stop,
        metrics_file=cfg.agent.metrics_file,
        reboot_required_file=cfg.agent.reboot_required_file,
        ttl=cfg.lock.ttl,
        # the longest step that cannot ping the watchdog: a health command, or one hook
        health_timeout=max(cfg.health.timeout, cfg.hooks.timeout),
        pinned=lambda: _pinned(cfg.update.state_dir),
    )


def _pinned(state_dir: str) -> str | None:
    version = pin.load(state_dir)
    return str(version) if version is not None else None

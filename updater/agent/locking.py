"""The agent's reboot lock, whichever backend the configuration names: ``RebootLock``.

- ``etcd``: a place in the etcd semaphore with a lease of ``[lock] ttl`` seconds. The lease id is
  kept in the agent's record and renewed after the machine's own reboot, so the place survives
  the reboot; the TTL must cover a reboot and the health checks, and bounds how long a machine
  that dies holding the lock blocks its group.
- ``fleetlock``: ``pre-reboot`` / ``steady-state`` on a FleetLock server; asking again renews.

This module does not decide when to take or give back the lock (``updater.agent.machine``).
"""

from __future__ import annotations

import time
from typing import Protocol

from updater.agent.record import LockTicket
from updater.config import LockBackend, LockSettings
from updater.errors import UsageError
from updater.rebootlock.etcd import EtcdGateway, EtcdSemaphore, Grant
from updater.rebootlock.fleetlock import FleetLockClient


class RebootLock(Protocol):
    backend: str

    def acquire(self) -> LockTicket | tuple[str, ...]:
        """The ticket, or the ids of the holders when the group is full."""
        ...

    def refresh(self, ticket: LockTicket) -> bool:
        """Keep holding; False when the place was lost (lease expired, unlocked)."""
        ...

    def release(self, ticket: LockTicket) -> None: ...


class EtcdLock:
    backend = "etcd"

    def __init__(self, settings: LockSettings, holder: str) -> None:
        self.semaphore = EtcdSemaphore(EtcdGateway(settings.endpoints, settings.timeout),
                                       settings.prefix)  # fmt: skip
        self.group = settings.group
        self.holder = holder
        self.ttl = max(2, round(settings.ttl))

    def acquire(self) -> LockTicket | tuple[str, ...]:
        got = self.semaphore.acquire(self.group, self.holder, self.ttl)
        if isinstance(got, Grant):
            return LockTicket(self.backend, got.holder, got.group, got.lease, time.time())
        return tuple(h.id for h in got.holders)

    def refresh(self, ticket: LockTicket) -> bool:
        return self.semaphore.refresh(Grant(ticket.group, ticket.id, ticket.lease))

    def release(self, ticket: LockTicket) -> None:
        self.semaphore.release(ticket.group, ticket.id, ticket.lease)


class FleetLock:
    backend = "fleetlock"

    def __init__(self, settings: LockSettings, holder: str) -> None:
        self.client = FleetLockClient(settings.endpoints[0], settings.timeout)
        self.group = settings.group
        self.holder = holder

    def acquire(self) -> LockTicket | tuple[str, ...]:
        if self.client.pre_reboot(self.holder, self.group):
            return LockTicket(self.backend, self.holder, self.group, 0, time.time())
        return ()  # FleetLock does not say who holds the places

    def refresh(self, ticket: LockTicket) -> bool:
        return self.client.pre_reboot(ticket.id, ticket.group)

    def release(self, ticket: LockTicket) -> None:
        self.client.steady_state(ticket.id, ticket.group)


def reboot_lock(settings: LockSettings, holder: str) -> RebootLock | None:
    if settings.backend is not LockBackend.NONE and not settings.endpoints:
        raise UsageError(f"[lock] backend is {settings.backend} but [lock] endpoints is empty")
    if settings.backend is LockBackend.ETCD:
        return EtcdLock(settings, holder)
    if settings.backend is LockBackend.FLEETLOCK:
        return FleetLock(settings, holder)
    return None

"""``updater lock``: the operator's view of the etcd reboot semaphore (status, unlock, set-max)
and ``serve``, a FleetLock server backed by it. Settings: ``[lock]`` (backend etcd)."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from updater import config, jsonout
from updater.config import LockBackend
from updater.errors import DataError, UpdaterError, UsageError
from updater.rebootlock import semaphore

if TYPE_CHECKING:
    from updater.rebootlock.etcd import EtcdSemaphore

# requests and http.server are imported when a lock command runs, not at every start-up.


def _semaphore(args: argparse.Namespace) -> tuple[EtcdSemaphore, config.LockSettings]:
    settings = config.load(args.config).lock
    group = getattr(args, "group", None)
    if group is not None:
        try:
            semaphore.check_group(group)
        except DataError as exc:
            raise UsageError(f"--group: {exc.message}") from None
    if settings.backend is not LockBackend.ETCD or not settings.endpoints:
        raise UsageError(
            "lock commands talk to etcd: [lock] backend must be etcd, with endpoints",
            hint=f"see the [lock] section of {config.CONFIG_PATH}",
        )
    from updater.rebootlock.etcd import EtcdGateway, EtcdSemaphore

    gateway = EtcdGateway(settings.endpoints, settings.timeout)
    return EtcdSemaphore(gateway, settings.prefix), settings


def cmd_status(args: argparse.Namespace) -> int:
    from updater.rebootlock.etcd import holder_json

    sem, _ = _semaphore(args)
    groups = sem.status(args.group)
    if args.json:
        doc: dict[str, Any] = {"groups": [
            {"group": g.group, "max": g.max, "holders": [holder_json(h, t) for h, t in g.holders]}
            for g in groups]}  # fmt: skip
        sys.stdout.write(jsonout.dumps(doc))
        return 0
    if not groups:
        sys.stdout.write("no reboot semaphore in etcd yet (every group: max 1, no holders)\n")
    for g in groups:
        sys.stdout.write(f"group {g.group}: {len(g.holders)} of max {g.max} rebooting\n")
        for h, ttl in g.holders:
            left = f", lease {h.lease} with {ttl} s left" if ttl >= 0 else ""
            sys.stdout.write(f"  {h.id} since {h.since or '?'}{left}\n")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    sem, settings = _semaphore(args)
    group = args.group or settings.group
    holder = sem.read(group).holds(args.id)
    if holder is None or not sem.release(group, args.id, holder.lease):
        raise UpdaterError(f"{args.id} holds no reboot lock in group {group}",
                           hint="updater lock status lists the holders")  # fmt: skip
    sys.stdout.write(f"released {args.id}'s place in group {group}\n")
    return 0


def cmd_set_max(args: argparse.Namespace) -> int:
    sem, settings = _semaphore(args)
    group = args.group or settings.group
    if not 0 <= args.max <= 1000:
        raise UsageError(f"the maximum must be 0..1000, not {args.max}")
    before = sem.set_max(group, args.max)
    sys.stdout.write(f"group {group}: max {before} -> {args.max}\n")
    return 0


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    from updater.agent.notify import Notifier
    from updater.rebootlock.fleetlock import FleetLockServer

    sem, settings = _semaphore(args)
    server = FleetLockServer(_listen(args.listen), sem, max(2, round(settings.ttl)))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    sys.stderr.write(f"updater lock serve: FleetLock on http://{host!s}:{port} backed by etcd "
                     f"{', '.join(settings.endpoints)}\n")  # fmt: skip
    sys.stderr.flush()
    Notifier().ready(f"serving FleetLock on {host!s}:{port}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lock",
        help="the fleet's reboot semaphore in etcd: status, unlock, set-max, serve",
        description="The reboot semaphore the agents share in etcd ([lock] backend = etcd):\n"
        "a maximum number of machines per group rebooting at once, each holding a lease.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="lock_command", metavar="ACTION")
    actions.required = True
    s = actions.add_parser("status", help="groups, their maximum and their holders")
    s.add_argument("--group", metavar="G", help="only this group")
    s.add_argument("--json", action="store_true", help='{"groups": [...]} (README)')
    s.set_defaults(func=cmd_status)
    u = actions.add_parser("unlock", help="give a holder's place back (a machine gone for good)")
    u.add_argument("id", metavar="ID")
    u.add_argument("--group", metavar="G", help="default: [lock] group")
    u.set_defaults(func=cmd_unlock)
    m = actions.add_parser("set-max", help="how many machines of a group may reboot at once")
    m.add_argument("max", metavar="N", type=int)
    m.add_argument("--group", metavar="G", help="default: [lock] group")
    m.set_defaults(func=cmd_set_max)
    v = actions.add_parser("serve", help="a FleetLock server backed by the etcd semaphore")
    v.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:3333",
                   help="address to listen on (default 127.0.0.1:3333)")  # fmt: skip
    v.set_defaults(func=cmd_serve)

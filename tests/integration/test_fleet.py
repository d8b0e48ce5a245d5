"""Many agents, each a separate process on its own image-file disk (the simulator), against one
real etcd and one release repository: reboot limits per group, a dead holder's lease running
out, maintenance windows under a moved clock, rollout waves in order.

What etcd held is checked by the test's own reading of etcd's history (``fleet.RawEtcd``), not
by the project's client: at every revision, per group, how many holder keys existed.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.integration.conftest import need_tools
from tests.integration.fleet import (
    EtcdServer,
    Fleet,
    RawEtcd,
    SimMachine,
    machine_id_with_seed,
    new_fleet,
    publish,
    run_updater,
    wait_until,
)

pytestmark = pytest.mark.integration


def lock_config(etcd: EtcdServer, group: str, ttl: int = 30, agent: str = "") -> str:
    return (agent + f'[lock]\nbackend = "etcd"\nendpoints = ["{etcd.url}"]\ngroup = "{group}"\n'
            f"ttl = {ttl}\nretry = 0.3\ntimeout = 5\n"
            '[health]\ncommands = ["true"]\ninterval = 0.2\n')  # fmt: skip


def test_reboots_stay_within_each_groups_maximum(etcd: EtcdServer, fast_tmp: Path) -> None:
    raw = RawEtcd(etcd.url)
    repo = fast_tmp / "repo"
    publish(repo, [{"version": "2"}])
    names = ["a1", "a2", "a3", "b1", "b2", "b3"]
    fleet = new_fleet(fast_tmp / "m", repo, names,
                      lambda n: lock_config(etcd, "a" if n.startswith("a") else "b"))  # fmt: skip
    run_updater("--config", fleet.machines[0].cfg, "lock", "set-max", "2", "--group", "b")

    def on_reboot(m: SimMachine, doc: dict[str, Any]) -> None:
        group = "a" if m.name.startswith("a") else "b"
        assert m.holder_id() in raw.holders(group), f"{m.name} rebooted without the lock"
        assert doc["via"] == "kexec" and doc["next"] == "B"

    fleet.on_reboot = on_reboot
    fleet.update_all("2")
    assert raw.most_holders("a") == 1
    assert raw.most_holders("b") <= 2
    assert raw.holders("a") == [] and raw.holders("b") == []
    for m in fleet.machines:
        assert len(m.reboots) == 1, f"{m.name} rebooted {len(m.reboots)} times"
        assert (m.dir / "booted").read_text().strip() == "B"
        status = json.loads(run_updater("--config", m.cfg, "--disk", str(m.dir / "disk.img"),
                                        "--booted", "B", "status", "--json"))  # fmt: skip
        assert [s["successful"] for s in status["slots"]] == [True, True]
        assert status["next"] == 4 and status["agent"]["booted_version"] == "2"
        assert status["agent"]["lock"] is None and status["agent"]["state"] in ("committed", "idle")
    locks = json.loads(run_updater("--config", fleet.machines[0].cfg, "lock", "status", "--json"))
    assert locks == {"groups": [{"group": "b", "holders": [], "max": 2}]}


def test_a_dead_holders_lease_runs_out(etcd: EtcdServer, fast_tmp: Path) -> None:
    raw = RawEtcd(etcd.url)
    repo = fast_tmp / "repo"
    publish(repo, [{"version": "2"}])
    fleet = new_fleet(fast_tmp / "m", repo, ["dies", "waits"], lambda n: lock_config(etcd, "g", 3))
    dies, waits = fleet.machines
    try:
        fleet.dead.add("dies")  # it never comes back from its reboot
        fleet.start([dies])
        wait_until("the first machine to reboot holding the lock",
                   lambda: dies.rebooted() is not None, 60, dies.log)  # fmt: skip
        held = raw.keys(f"updater/reboot-lock/g/holders/{dies.holder_id()}")
        assert len(held) == 1
        lease = next(iter(held.values()))["lease"]
        assert 0 < raw.lease_ttl(lease) <= 3
        fleet.start([waits])
        wait_until("the second machine to wait for the lock",
                   lambda: waits.record().get("lock_holders") == [dies.holder_id()], 60,
                   waits.log)  # fmt: skip
        assert waits.record()["state"] == "waiting-for-lock"
        fleet.run_until("the second machine on release 2", lambda: waits.committed("2"))
        # The first one comes back much later: its place is gone, it goes on without it.
        fleet.dead.clear()
        fleet.run_until("the first machine on release 2", lambda: dies.committed("2"))
    finally:
        fleet.stop()
    assert raw.most_holders("g") == 1
    assert "the reboot lock was lost" in dies.log()


def _epoch(text: str, zone: str = "Europe/Berlin") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def set_clock(path: Path, fake_now: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{fake_now - time.time():.3f}\n")
    tmp.replace(path)


def test_reboots_wait_for_the_maintenance_window(etcd: EtcdServer, fast_tmp: Path) -> None:
    raw = RawEtcd(etcd.url)
    repo, clock = fast_tmp / "repo", fast_tmp / "clock"
    publish(repo, [{"version": "2"}])
    set_clock(clock, _epoch("2024-06-14 12:00"))  # a Friday noon in Berlin
    window = ('timezone = "Europe/Berlin"\n'
              'windows = [{days = ["Sat"], start = "02:00", minutes = 60}]\n')  # fmt: skip
    fleet = new_fleet(fast_tmp / "m", repo, ["w1", "w2", "w3"],
                      lambda n: lock_config(etcd, "w", agent=window),
                      env={"UPDATER_SIM_CLOCK": str(clock)})  # fmt: skip
    opens, closes = _epoch("2024-06-15 02:00"), _epoch("2024-06-15 03:00")
    try:
        fleet.start()
        fleet.run_until("every machine staged and waiting for the window", lambda: all(
            m.record().get("state") == "waiting-for-window" for m in fleet.machines))  # fmt: skip
        time.sleep(1.5)  # they keep waiting (each decides again every 0.4 s)
        fleet.step()
        assert all(m.reboots == [] and m.record()["state"] == "waiting-for-window"
                   for m in fleet.machines)  # fmt: skip
        assert raw.most_holders("w") == 0
        set_clock(clock, opens + 30)
        fleet.run_until("every machine on release 2",
                        lambda: all(m.committed("2") for m in fleet.machines))  # fmt: skip
    finally:
        fleet.stop()
    for m in fleet.machines:
        assert len(m.reboots) == 1 and opens <= m.reboots[0]["time"] < closes
    assert raw.most_holders("w") == 1


def test_waves_start_in_order(etcd: EtcdServer, fast_tmp: Path) -> None:
    repo, clock = fast_tmp / "repo", fast_tmp / "clock"
    base = _epoch("2030-01-01 00:00", "UTC")
    starts = [base + 3600, base + 7200, base + 10800]
    bounds = [683, 1366, 2048]
    utc = ZoneInfo("UTC")
    plan = [[b, datetime.fromtimestamp(s, utc).isoformat()]
            for b, s in zip(bounds, starts, strict=True)]  # fmt: skip
    publish(repo, [{"version": "2", "waves": plan}])
    set_clock(clock, base)
    lows = [0, *bounds[:-1]]
    waves = [["w0m0"], ["w1m0", "w1m1"], ["w2m0"]]
    fleet = Fleet([])
    for w, names in enumerate(waves):
        for name in names:
            mid = machine_id_with_seed(lambda s, w=w: lows[w] <= s < bounds[w])  # type: ignore[misc]
            m = SimMachine(fast_tmp / "m" / name, name,
                           'interval = 3600\n' + lock_config(etcd, "waves"),
                           {"UPDATER_SIM_CLOCK": str(clock)}, mid)  # fmt: skip
            fleet.machines.append(m.create(repo))
    by_name = {m.name: m for m in fleet.machines}
    try:
        fleet.start()
        fleet.run_until("every machine to see release 2 and its wave", lambda: all(
            m.record().get("available") == "2" for m in fleet.machines))  # fmt: skip
        for m in fleet.machines:
            rec = m.record()
            assert rec["state"] == "idle" and m.reboots == []
            assert rec["wave_start"] in starts
        for w, start in enumerate(starts):
            set_clock(clock, start + 60)
            wave = [by_name[n] for n in waves[w]]
            fleet.run_until(f"wave {w + 1} on release 2",
                            lambda wave=wave: all(m.committed("2") for m in wave))  # type: ignore[misc]  # fmt: skip
            later = [by_name[n] for ws in waves[w + 1:] for n in ws]
            moved = [m.name for m in later if m.reboots or (m.dir / "version-B").exists()]
            assert moved == [], f"machines of a later wave moved during wave {w + 1}"
    finally:
        fleet.stop()
    for w, names in enumerate(waves):
        for n in names:
            assert starts[w] <= by_name[n].reboots[0]["time"]


def test_killed_and_power_cut_during_verification(fast_tmp: Path) -> None:
    """SIGKILL while the health checks run: the restarted agent checks again and commits. A
    power cut there instead: GRUB boots the previous slot (the trial's one try is spent), the
    release is blocked, and offered again only after ``updater agent forget``."""
    need_tools("sgdisk")
    repo = fast_tmp / "repo"
    publish(repo, [{"version": "2"}])
    healthy = fast_tmp / "healthy"
    config = f'[health]\ncommands = ["test -e {healthy}"]\ndeadline = 600\ninterval = 0.2\n'
    fleet = new_fleet(fast_tmp / "m", repo, ["killed", "cut"], lambda n: config)
    killed, cut = fleet.machines

    def verifying(m: SimMachine) -> bool:
        return m.record().get("state") == "verifying" and m.record().get("booted_version") == "2"

    try:
        fleet.start()
        fleet.run_until("both machines verifying release 2",
                        lambda: verifying(killed) and verifying(cut))  # fmt: skip
        killed.kill()
        killed.start()
        cut.kill()
        assert cut.boot() == "A", "GRUB falls back: the trial slot's one try is spent"
        cut.start()
        fleet.run_until("the cut machine back on release 1",
                        lambda: cut.record().get("rollbacks") == 1)  # fmt: skip
        healthy.touch()
        fleet.run_until("the killed machine on release 2", lambda: killed.committed("2"))
        rec = cut.record()
        assert rec["blocked"][0]["version"] == "2" and rec["blocked"][0]["reason"] == "boot-failed"
        assert (cut.dir / "booted").read_text().strip() == "A"
        status = json.loads(run_updater("--config", cut.cfg, "--disk", str(cut.dir / "disk.img"),
                                        "--booted", "A", "status", "--json"))  # fmt: skip
        assert status["agent"]["blocked"][0]["version"] == "2"
        assert status["slots"][1]["priority"] == 0 or not status["slots"][1]["successful"]
        assert "release 2 may be offered again" in run_updater("--config", cut.cfg, "agent",
                                                               "forget", "2")  # fmt: skip
        fleet.run_until("the cut machine on release 2 after forget", lambda: cut.committed("2"),
                        timeout=60)  # fmt: skip
    finally:
        fleet.stop()
    assert len(killed.reboots) == 1 and len(cut.reboots) == 2

"""The agent's record and its files: the JSON codec against hostile input, atomic writes, the
metrics file (read back with prometheus_client's own parser), systemd notifications (received
on a real datagram socket), and the status object."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from updater.agent import metrics, record, report
from updater.agent.notify import Notifier
from updater.agent.record import Blocked, LockTicket, Reason, Record, State
from updater.agent.schedule import parse_waves
from updater.agent.store import Store, write_atomic
from updater.errors import DataError

FULL = Record(
    state=State.VERIFYING, version="2", waves=parse_waves([[1024, "2030-01-01T00:00:00Z"]]),
    from_slot="A", from_version="1", target_slot="B",
    lock=LockTicket("etcd", "c0ffee", "workers", 7587888, 1700000000.5), healthy=True,
    verify_deadline=1700000300.0, reboot_attempts=1, committed_slot="A", committed_version="1",
    booted_version="2", available="2", lock_holders=("x",),
    blocked=(Blocked("0.9", Reason.MANUAL, 1.0),), last_error="boom", last_check=5.0,
    rollbacks=3, changed=9.0,
)  # fmt: skip


def test_round_trip() -> None:
    assert record.loads(record.dumps(FULL)) == FULL
    assert record.loads(record.dumps(Record())) == Record()


@given(
    state=st.sampled_from(list(State)),
    version=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=0x7E),
                                         min_size=1, max_size=40)),
    rollbacks=st.integers(0, 1 << 30),
    when=st.one_of(st.none(), st.floats(0, 4e9)),
)  # fmt: skip
def test_round_trip_property(state: State, version: str | None, rollbacks: int,
                             when: float | None) -> None:  # fmt: skip
    rec = Record(state=state, version=version, rollbacks=rollbacks, last_check=when)
    assert record.loads(record.dumps(rec)) == rec


def _mutated(**changes: object) -> bytes:
    doc = record.to_json(FULL)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "format None"),
        (_mutated(format=2), "format 2, this agent reads 1"),
        (_mutated(state="dancing"), "unknown state"),
        (_mutated(version=7), "version must be printable text"),
        (_mutated(version="a\nb"), "version must be printable text"),
        (_mutated(version="x" * 600), "version must be printable text"),
        (_mutated(target_slot="b"), "target_slot 'b' is malformed"),
        (_mutated(rollbacks=-1), "rollbacks must be a whole number"),
        (_mutated(rollbacks=True), "rollbacks must be a whole number"),
        (_mutated(last_check="yesterday"), "last_check must be a number"),
        (_mutated(healthy="yes"), "healthy must be true or false"),
        (_mutated(lock={"backend": "zookeeper", "id": "a", "group": "g"}), "unknown lock backend"),
        (_mutated(lock={"backend": "etcd", "id": "a", "group": "g", "lease": -5}), "lease"),
        (_mutated(blocked=[{"version": "1", "reason": "bored", "since": 1}]), "block reason"),
        (_mutated(blocked=[{"version": "1"}] * 200), "short list"),
        (_mutated(waves=[[0, "x"]]), "agent state: release wave bound"),
        (b" " * (record.MAX_BYTES + 1), "more than"),
    ],
)
def test_hostile_records_are_one_line_errors(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        record.loads(data)
    assert "\n" not in info.value.message


def test_blocked_list_is_bounded_and_forgettable() -> None:
    rec = Record()
    for i in range(record.MAX_BLOCKED + 5):
        rec = rec.block(str(i), Reason.HEALTH, float(i))
    assert len(rec.blocked) == record.MAX_BLOCKED and rec.blocked[0].version == "5"
    assert rec.block("68", Reason.BOOT, 1.0) == rec, "a version is blocked once"
    some = frozenset({"6", "7"})
    assert rec.forget(some).blocked_versions() == rec.blocked_versions() - some
    assert rec.forget(None).blocked == ()


def test_store_writes_atomically_and_names_the_file_on_damage(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state"))
    assert store.load() == Record() and not store.exists()
    store.save(FULL)
    assert store.load() == FULL and sorted(os.listdir(tmp_path / "state")) == ["agent.json"]
    (tmp_path / "state" / "agent.json").write_text("{")
    with pytest.raises(DataError, match=r"agent.json: agent state: not JSON") as info:
        store.load()
    assert info.value.hint and "start over" in info.value.hint


def test_write_atomic_sets_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d" / "metrics.prom"
    write_atomic(target, b"one")
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two" and (target.stat().st_mode & 0o777) == 0o600
    assert os.listdir(target.parent) == ["metrics.prom"]


def _samples(rec: Record) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(rec).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_as_prometheus_reads_them() -> None:
    got = _samples(FULL)
    assert got[("updater_agent_state", (("state", "verifying"),))] == 1.0
    assert got[("updater_agent_state", (("state", "idle"),))] == 0.0
    assert sum(v for (n, _), v in got.items() if n == "updater_agent_state") == 1.0
    info = [labels for (n, labels) in got if n == "updater_agent_info"]
    assert dict(info[0]) == {"booted_version": "2", "available_version": "2", "version": "2",
                             "committed_version": "1"}  # fmt: skip
    assert got[("updater_agent_last_check_timestamp_seconds", ())] == 5.0
    assert ("updater_agent_last_success_timestamp_seconds", ()) not in got
    assert got[("updater_agent_rollbacks_total", ())] == 3.0
    assert got[("updater_agent_lock_held", ())] == 1.0
    assert got[("updater_agent_blocked_releases", ())] == 1.0
    assert got[("updater_agent_error", ())] == 1.0


def test_notifications_arrive_as_systemd_reads_them(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000",
                      "WATCHDOG_PID": str(os.getpid())})  # fmt: skip
        assert n.watchdog_interval == 20.0
        n.ready("idle: up to date")
        assert server.recv(4096) == b"READY=1\nSTATUS=idle: up to date"
        n.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        n.busy_for(60)
        assert server.recv(4096) == b"WATCHDOG_USEC=90000000\nWATCHDOG=1"
        n.watchdog_restore()
        assert server.recv(4096) == b"WATCHDOG_USEC=20000000\nWATCHDOG=1"
        n.status("a\nb")
        assert server.recv(4096) == b"STATUS=a b"
        n.stopping()
        assert server.recv(4096) == b"STOPPING=1"


def test_abstract_socket_and_no_socket() -> None:
    name = f"updater-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("x")
        assert server.recv(4096) == b"READY=1\nSTATUS=x"
    quiet = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert quiet.watchdog_interval is None, "the watchdog belongs to another process"
    quiet.ready("nobody listens")  # no socket: nothing happens


def test_status_object(tmp_path: Path) -> None:
    cfg = tmp_path / "updater.toml"
    cfg.write_text(f'[update]\nstate_dir = "{tmp_path / "state"}"\n')
    assert report.status_json(str(cfg)) is None
    assert report.status_line(None) == "agent: never ran\n"
    Store(str(tmp_path / "state")).save(FULL)
    doc = report.status_json(str(cfg))
    assert doc is not None
    assert doc["state"] == "verifying" and doc["booted_version"] == "2"
    assert doc["lock"] == {"backend": "etcd", "id": "c0ffee", "group": "workers",
                           "since": "2023-11-14T22:13:20Z"}  # fmt: skip
    assert doc["blocked"] == [{"version": "0.9", "reason": "manual-rollback",
                               "since": "1970-01-01T00:00:01Z"}]  # fmt: skip
    assert set(doc) == {"state", "description", "version", "booted_version", "available_version",
                        "committed_version", "wave_start", "last_error", "last_check",
                        "last_success", "next_check", "rollbacks", "blocked", "lock",
                        "lock_holders"}  # fmt: skip
    line = report.status_line(doc)
    assert line == ("agent: verifying (release 2); holds the reboot lock of group workers; "
                    "last error: boom\n")  # fmt: skip
    (tmp_path / "state" / "agent.json").write_text("nonsense")
    broken = report.status_json(str(cfg))
    assert broken is not None and broken["state"] is None and "not JSON" in broken["error"]

"""FleetLock: the project's client against ``updater lock serve`` (a separate process) backed by
a real etcd, raw protocol requests against the server, agents coordinating through it, and the
operator commands ``updater lock status|unlock|set-max`` on the same semaphore."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.fleet import (
    EtcdServer,
    RawEtcd,
    free_port,
    new_fleet,
    publish,
    run_updater,
    updater_argv,
    wait_until,
)
from updater.errors import TransportError
from updater.rebootlock.fleetlock import FleetLockClient

pytestmark = pytest.mark.integration


def server_config(tmp: Path, etcd: EtcdServer, ttl: int = 30) -> Path:
    path = tmp / "server.toml"
    path.write_text(f'[lock]\nbackend = "etcd"\nendpoints = ["{etcd.url}"]\nttl = {ttl}\n')
    return path


class Server:
    def __init__(self, tmp: Path, config: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (tmp / "serve.log").open("wb")
        listen = self.url.removeprefix("http://")
        argv = [*updater_argv(), "--config", str(config), "lock", "serve", "--listen", listen]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.tmp = tmp
        wait_until("the FleetLock server", self._up, 30, self.tail)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.tail())
        try:
            requests.get(self.url, timeout=1)
            return True
        except requests.RequestException:
            return False

    def tail(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")[-2000:]

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(10)
        self.log.close()
        return code


@pytest.fixture
def server(fast_tmp: Path, etcd: EtcdServer) -> Iterator[Server]:
    s = Server(fast_tmp, server_config(fast_tmp, etcd, ttl=3))
    try:
        yield s
    finally:
        assert s.stop() == 0, "SIGTERM stops the server cleanly"


def test_client_and_server_share_the_etcd_semaphore(server: Server, etcd: EtcdServer) -> None:
    raw = RawEtcd(etcd.url)
    client = FleetLockClient(server.url, 5)
    assert client.pre_reboot("m1", "default") is True
    assert client.pre_reboot("m1", "default") is True, "recursive: asking again keeps it"
    assert client.pre_reboot("m2", "default") is False, "the group is full"
    assert client.pre_reboot("m3", "other") is True, "groups are independent"
    assert raw.holders("default") == ["m1"] and raw.holders("other") == ["m3"]
    lease = next(iter(raw.keys("updater/reboot-lock/default/holders/m1").values()))["lease"]
    assert 0 < raw.lease_ttl(lease) <= 3
    client.steady_state("m1", "default")
    client.steady_state("m1", "default")  # unlock if held: a second time succeeds too
    assert raw.holders("default") == []
    assert client.pre_reboot("m2", "default") is True
    # m2 never says steady-state (it died): its place goes when the server's lease runs out
    wait_until("m2's lease to run out", lambda: client.pre_reboot("m4", "default"), 20)
    assert raw.holders("default") == ["m4"]


def test_protocol_errors(server: Server) -> None:
    body = {"client_params": {"id": "m1", "group": "default"}}
    r = requests.post(server.url + "/v1/pre-reboot", json=body, timeout=5)
    assert r.status_code == 400 and r.json()["kind"] == "missing_header"
    headers = {"fleet-lock-protocol": "true"}
    r = requests.post(server.url + "/v1/pre-reboot", data=b"{", headers=headers, timeout=5)
    assert r.status_code == 400 and r.json()["kind"] == "bad_client_params"
    bad_group = {"client_params": {"id": "m1", "group": "a_b"}}
    r = requests.post(server.url + "/v1/pre-reboot", json=bad_group, headers=headers, timeout=5)
    assert r.status_code == 400 and "lock group" in r.json()["value"]
    r = requests.post(server.url + "/v1/nothing", json=body, headers=headers, timeout=5)
    assert r.status_code == 404
    assert requests.get(server.url + "/v1/pre-reboot", timeout=5).status_code == 405
    r = requests.post(server.url + "/v1/pre-reboot", json=body, headers=headers, timeout=5)
    assert r.status_code == 200 and r.json() == {}
    full = {"client_params": {"id": "m2", "group": "default"}}
    r = requests.post(server.url + "/v1/pre-reboot", json=full, headers=headers, timeout=5)
    assert r.status_code == 409 and r.json()["kind"] == "failed_lock_semaphore_full"


def test_server_without_etcd_answers_503(fast_tmp: Path, etcd: EtcdServer) -> None:
    s = Server(fast_tmp, server_config(fast_tmp, etcd))
    try:
        etcd.stop()
        client = FleetLockClient(s.url, 5)
        with pytest.raises(TransportError, match="HTTP 503: failed_etcd: etcd unreachable"):
            client.pre_reboot("m1", "default")
    finally:
        s.stop()
    with pytest.raises(TransportError, match="FleetLock http://127.0.0.1:.*ConnectionError"):
        FleetLockClient(s.url, 2).pre_reboot("m1", "default")


def test_agents_through_the_fleetlock_server(fast_tmp: Path, etcd: EtcdServer) -> None:
    raw = RawEtcd(etcd.url)
    s = Server(fast_tmp, server_config(fast_tmp, etcd))
    repo = fast_tmp / "repo"
    publish(repo, [{"version": "2"}])
    config = (f'[lock]\nbackend = "fleetlock"\nendpoints = ["{s.url}"]\nretry = 0.3\n'
              '[health]\ncommands = ["true"]\n')  # fmt: skip
    fleet = new_fleet(fast_tmp / "m", repo, ["f1", "f2", "f3"], lambda n: config)

    def on_reboot(m: object, doc: object) -> None:
        assert len(raw.holders("default")) == 1

    fleet.on_reboot = on_reboot
    try:
        fleet.update_all("2")
    finally:
        s.stop()
    assert raw.most_holders("default") == 1 and raw.holders("default") == []
    assert all(len(m.reboots) == 1 for m in fleet.machines)


def test_operator_commands(fast_tmp: Path, etcd: EtcdServer) -> None:
    config = str(server_config(fast_tmp, etcd))
    client_free = json.loads(run_updater("--config", config, "lock", "status", "--json"))
    assert client_free == {"groups": []}
    assert "no reboot semaphore in etcd yet" in run_updater("--config", config, "lock", "status")
    assert "max 1 -> 3" in run_updater("--config", config, "lock", "set-max", "3", "--group", "web")
    s = Server(fast_tmp, server_config(fast_tmp, etcd))
    try:
        client = FleetLockClient(s.url, 5)
        assert client.pre_reboot("node-1", "web") and client.pre_reboot("node-2", "web")
    finally:
        s.stop()
    doc = json.loads(run_updater("--config", config, "lock", "status", "--group", "web", "--json"))
    (group,) = doc["groups"]
    assert group["group"] == "web" and group["max"] == 3
    assert [h["id"] for h in group["holders"]] == ["node-1", "node-2"]
    assert all(0 < h["ttl"] <= 30 and h["lease"] > 0 and h["since"] for h in group["holders"])
    text = run_updater("--config", config, "lock", "status")
    assert "group web: 2 of max 3 rebooting" in text and "node-1 since" in text
    assert "released node-1" in run_updater("--config", config, "lock", "unlock", "node-1",
                                            "--group", "web")  # fmt: skip
    assert RawEtcd(etcd.url).holders("web") == ["node-2"]
    argv = [*updater_argv(), "--config", config, "lock", "unlock", "node-1", "--group", "web"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == ("updater: error: node-1 holds no reboot lock in group web "
                           "(updater lock status lists the holders)\n")  # fmt: skip
    proc = subprocess.run([*argv[:-1], "bad group"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--group" in proc.stderr

"""A fleet of simulated machines for the agent's integration tests, and a real etcd.

- ``EtcdServer``: Debian's etcd on 127.0.0.1 with free ports and a data directory in memory.
- ``RawEtcd``: the test's own reading of etcd through the v3 JSON gateway (independent of the
  project's client): keys under a prefix now, or at any past revision, to check what the
  semaphore held over the whole run.
- ``SimMachine``: one machine (``updater.agent.simulator``): a disk made with ``updater
  create-disk``, an agent process (``updater agent --simulate DIR``), and the part a real
  machine's firmware and GRUB play: when the agent process ends with a reboot, ``boot()`` runs
  ``updater next`` on the disk and the agent is started again on the chosen slot.

It does not decide what a test asserts.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "updater/reboot-lock"


def updater_argv() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "updater"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60,
               on_timeout: Callable[[], str] = lambda: "") -> None:  # fmt: skip
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)


class EtcdServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (directory / "etcd.log").open("wb")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", str(directory / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until("etcd to answer", self._up, 30, self.tail)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.tail()}")
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def tail(self) -> str:
        return (self.dir / "etcd.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@contextmanager
def etcd_server(directory: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(directory)
    try:
        yield server
    finally:
        server.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class RawEtcd:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = requests.post(f"{self.url}/v3/{path}", json=body, timeout=10)
        resp.raise_for_status()
        doc: dict[str, Any] = resp.json()
        return doc

    def keys(self, prefix: str, revision: int = 0) -> dict[str, dict[str, Any]]:
        end = bytearray(prefix.encode())
        end[-1] += 1
        body: dict[str, Any] = {"key": _b64(prefix.encode()), "range_end": _b64(bytes(end))}
        if revision:
            body["revision"] = str(revision)
        kvs = self.post("kv/range", body).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): kv for kv in kvs}

    def revision(self) -> int:
        return int(self.post("kv/range", {"key": _b64(b"x")})["header"]["revision"])

    def holders(self, group: str, revision: int = 0) -> list[str]:
        base = f"{PREFIX}/{group}/holders/"
        return sorted(k[len(base):] for k in self.keys(base, revision))

    def most_holders(self, group: str) -> int:
        """The most holders ``group`` had at once, over every revision etcd kept."""
        return max(len(self.holders(group, r)) for r in range(1, self.revision() + 1))

    def lease_ttl(self, lease: str) -> int:
        return int(self.post("lease/timetolive", {"ID": lease}).get("TTL", -1))


def machine_id_with_seed(wanted: Callable[[int], bool]) -> str:
    """A random machine id whose wave seed satisfies ``wanted``: the seed as the README
    specifies it (HMAC-SHA256 keyed with the machine id over the wave application id, first two
    bytes modulo 2048), computed here independently."""
    import hashlib
    import hmac

    from updater.agent.schedule import WAVE_APP_ID

    while True:
        mid = secrets.token_hex(16)
        digest = hmac.new(bytes.fromhex(mid), WAVE_APP_ID.bytes, hashlib.sha256).digest()
        if wanted(int.from_bytes(digest[:2], "big") % 2048):
            return mid


@dataclass
class SimMachine:
    dir: Path
    name: str
    config: str  # TOML appended to the machine's own settings
    env: dict[str, str] = field(default_factory=dict)
    machine_id: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen[bytes] | None = None
    reboots: list[dict[str, Any]] = field(default_factory=list)
    _log: Any = None

    def create(self, repo: Path) -> SimMachine:
        self.dir.mkdir(parents=True)
        (self.dir / "esp").mkdir()
        run_updater("create-disk", str(self.dir / "disk.img"), "--usr-size", "1")
        (self.dir / "version-A").write_text("1\n")
        (self.dir / "booted").write_text("A\n")
        (self.dir / "machine-id").write_text(self.machine_id + "\n")
        (self.dir / "updater.toml").write_text(
            f'[update]\nrepo = "{repo}"\nstate_dir = "{self.dir / "state"}"\n'
            f'[agent]\nmachine_id_file = "{self.dir / "machine-id"}"\n'
            f'metrics_file = "{self.dir / "metrics.prom"}"\n'
            f'reboot_required_file = "{self.dir / "reboot-required"}"\n' + self.config
        )
        return self

    @property
    def cfg(self) -> str:
        return str(self.dir / "updater.toml")

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self._log = (self.dir / "agent.log").open("ab")
        self.proc = subprocess.Popen(
            [*updater_argv(), "--config", self.cfg, "agent", "--simulate", str(self.dir)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "LANG": "C.UTF-8", **self.env},
        )  # fmt: skip

    def ended(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def rebooted(self) -> dict[str, Any] | None:
        """The reboot the agent asked for, once its process is gone."""
        path = self.dir / "reboot"
        if not self.ended() or not path.exists():
            return None
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def boot(self) -> str:
        """What firmware and GRUB do: ``updater next`` on the disk, then boot that slot."""
        out = run_updater("--disk", str(self.dir / "disk.img"), "--esp", str(self.dir / "esp"),
                          "next", "--json")  # fmt: skip
        letter = {3: "A", 4: "B"}[json.loads(out)["partition"]]
        (self.dir / "booted").write_text(letter + "\n")
        (self.dir / "reboot").unlink(missing_ok=True)
        return letter

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        return self.proc.returncode

    def record(self) -> dict[str, Any]:
        path = self.dir / "state" / "agent.json"
        if not path.exists():
            return {}
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except ValueError:  # replaced under us: read again next time
            return {}
        return doc

    def holder_id(self) -> str:
        from updater.agent.schedule import holder_id

        return holder_id(self.machine_id)

    def log(self) -> str:
        path = self.dir / "agent.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def committed(self, version: str) -> bool:
        rec = self.record()
        return rec.get("committed_version") == version and rec.get("lock") is None


def run_updater(*args: str) -> str:
    proc = subprocess.run([*updater_argv(), *args], capture_output=True, text=True,
                          env={**os.environ, "LANG": "C.UTF-8"})  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"updater {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


@dataclass
class Fleet:
    """Runs machines: restarts each agent after the reboot it asked for, as the machine would."""

    machines: list[SimMachine]
    on_reboot: Callable[[SimMachine, dict[str, Any]], None] = lambda m, doc: None
    dead: set[str] = field(default_factory=set)  # machines that do not come back

    def start(self, only: Iterable[SimMachine] | None = None) -> None:
        for m in only or self.machines:
            m.start()

    def step(self) -> None:
        for m in self.machines:
            if m.name in self.dead:
                continue
            doc = m.rebooted()
            if doc is not None:
                m.reboots.append(doc)
                self.on_reboot(m, doc)
                m.boot()
                m.start()
            elif m.ended():
                raise AssertionError(f"{m.name}'s agent exited without a reboot:\n{m.log()}")

    def run_until(self, what: str, done: Callable[[], bool], timeout: float = 120) -> None:
        def check() -> bool:
            self.step()
            return done()

        wait_until(what, check, timeout, self.logs)

    def update_all(self, version: str, timeout: float = 120) -> None:
        """Start every agent, run until each machine committed ``version``, stop them."""
        try:
            self.start()
            self.run_until(f"every machine on release {version}",
                           lambda: all(m.committed(version) for m in self.machines), timeout)
        finally:
            self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{m.log()}" for m in self.machines)

    def stop(self) -> None:
        for m in self.machines:
            m.stop()


def new_fleet(root: Path, repo: Path, names: Iterable[str], config: Callable[[str], str],
              env: dict[str, str] | None = None) -> Fleet:  # fmt: skip
    machines = [SimMachine(root / n, n, config(n), dict(env or {})).create(repo) for n in names]
    return Fleet(machines)


def publish(repo: Path, releases: list[dict[str, Any]]) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    tmp = repo / "releases.json.tmp"
    tmp.write_text(json.dumps({"releases": releases}))
    tmp.replace(repo / "releases.json")


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""``updater update`` end to end on a disk image: a signed repository served over real HTTP
(with a fault-injecting proxy in front), the image streamed into USR-B and read back, the
kernel and initrd on the ESP, USR-B activated. cgpt and sgdisk read the result; every bad input
is one line, exit 1, the booted slot's attribute bits unchanged and USR-B unbootable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, CgptField, need_tools, sgdisk_attributes
from tests.integration.httprepo import Fault
from tests.integration.repos import FAULTS, Setup, Site, one_line_error
from tests.unit.memrepo import make_image
from updater import inventory, layout
from updater.release import parse_version

pytestmark = pytest.mark.integration
MiB = 1 << 20
A, B = 3, 4


def make_disk(path: Path, usr_mib: int = 8) -> Path:
    need_tools("sgdisk", "cgpt")
    small = layout.flatcar_layout(usr_size=usr_mib * MiB, esp_size=4 * MiB, oem_size=4 * MiB,
                                  root_size=4 * MiB)  # fmt: skip
    layout.create_disk(small, str(path))
    return path


class Machine:
    """An image-file disk booted from USR-A (version ``booted``), a mounted-ESP directory, and
    the update command as an operator runs it against the site's proxy."""

    def __init__(self, site: Site, booted: str = "1", usr_mib: int = 8) -> None:
        self.site = site
        self.disk = make_disk(site.tmp / "disk.img", usr_mib)
        self.esp = site.tmp / "esp"
        (self.esp / "flatcar").mkdir(parents=True)
        self.state = site.state
        inventory.record(str(self.state), str(layout.USR_A_UUID), parse_version(booted))
        self.config = site.tmp / "updater.toml"
        self.config.write_text("[update]\ntimeout = 1\nretries = 1\n")

    def update(self, *args: str) -> subprocess.CompletedProcess[str]:
        exe = ROOT / ".venv" / "bin" / "updater"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]
        return subprocess.run(
            [*argv, "--config", str(self.config), "--disk", str(self.disk), "--booted", "A",
             "--esp", str(self.esp), "update", "--repo", self.site.proxy.url,
             "--trusted-root", str(self.site.trusted_root), "--state-dir", str(self.state),
             *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def slot_bytes(self, part: int, size: int) -> bytes:
        from updater import gpt

        with gpt.locked(str(self.disk), writable=False) as d:
            entry = next(e for e in gpt.read_table(d).entries() if e.number == part)
        with self.disk.open("rb") as f:
            f.seek(entry.first_lba * 512)
            return f.read(size)


def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def prio_tries_good(cgpt: CgptField, disk: Path, part: int) -> tuple[int, int, int]:
    return cgpt(disk, part, "P"), cgpt(disk, part, "T"), cgpt(disk, part, "S")


def test_update_writes_verifies_activates_and_knows_it_is_staged(
    site: Site, cgpt_field: CgptField
) -> None:
    m = Machine(site)
    proc = m.update("--json")
    assert proc.returncode == 0, proc.stderr
    docs = events(proc)
    kinds = [d["event"] for d in docs]
    assert kinds[:2] == ["checking", "available"] and kinds[-2:] == ["activated", "result"]
    assert {"downloading", "verifying"} <= set(kinds)
    assert docs[0]["booted_version"] == "1" and docs[1]["version"] == "2"
    assert docs[-1] == {"event": "result", "status": "updated", "version": "2",
                        "reason": docs[1]["reason"], "exit": 0}  # fmt: skip
    image = make_image(2, fs_size=3 * MiB + 5000)  # what the site published as release 2
    assert m.slot_bytes(B, len(image.data)) == image.data
    assert (m.esp / "flatcar" / "vmlinuz-b").read_bytes() == image.kernel
    assert (m.esp / "flatcar" / "initrd-b").read_bytes() == b"initrd"
    # Flatcar's postinst result, read by cgpt: B P2 T1 S0 on top of A P1 T0 S1
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)
    assert prio_tries_good(cgpt_field, m.disk, A) == (1, 0, 1)
    again = m.update()
    assert again.returncode == 3, again.stderr
    assert "release 2 is already staged in USR-B; reboot to use it" in again.stdout


def test_check_writes_nothing(site: Site) -> None:
    m = Machine(site)
    before = m.disk.read_bytes()
    proc = m.update("--check", "--json")
    assert proc.returncode == 0, proc.stderr
    assert events(proc)[-1]["status"] == "available" and m.disk.read_bytes() == before
    assert list((m.esp / "flatcar").iterdir()) == []


def test_nothing_to_do_when_the_newest_is_booted(site: Site) -> None:
    m = Machine(site, booted="2")
    proc = m.update("--check")
    assert proc.returncode == 3 and "already running release 2" in proc.stdout


def test_resumes_an_interrupted_write(site: Site, cgpt_field: CgptField) -> None:
    m = Machine(site)
    # The connection to the image is cut after 2.5 MiB (four frames of about 1 MiB) and the
    # fetcher may not retry: the run fails with the first frames written and journaled.
    m.config.write_text("[update]\ntimeout = 1\nretries = 0\n")
    site.proxy.faults = [Fault(".usr.img.zst", "cut", after=5 * MiB // 2, times=1)]
    first = m.update("--json")
    assert first.returncode == 1
    assert prio_tries_good(cgpt_field, m.disk, B) == (0, 0, 0)
    journal = json.loads((m.state / "slot-write.json").read_text())
    assert journal["frames_done"] >= 1
    site.proxy.faults = []
    second = m.update("--json")
    assert second.returncode == 0, second.stderr
    activated = next(d for d in events(second) if d["event"] == "activated")
    assert activated["resumed"] is True and activated["whole_file_checked"] is False
    image = make_image(2, fs_size=3 * MiB + 5000)
    assert m.slot_bytes(B, len(image.data)) == image.data
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)


def _usr(change: Any) -> Setup:
    def setup(s: Site) -> None:
        s.proxy.faults = [Fault(".usr.img.zst", "body", change=change)]

    return setup


def _flip_in_frame(index: int) -> Setup:
    def setup(s: Site) -> None:
        releases = s.client().releases("stable", "x86_64")
        assert releases is not None
        at = releases[-1].image.frames.compressed_offset(index) + 33
        s.proxy.faults = [
            Fault(
                ".usr.img.zst", "body", change=lambda b: b[:at] + bytes([b[at] ^ 1]) + b[at + 1 :]
            )
        ]

    return setup


def _kernel_of_another_image(s: Site) -> None:
    other = make_image(9).kernel
    s.proxy.faults = [Fault(".vmlinuz", "body", change=lambda b: other, status=200)]


BAD: list[tuple[str, Setup, str]] = [
    *FAULTS,
    ("image longer than signed", _usr(lambda b: b + b"x"), "longer than its signed length"),
    ("image truncated", _usr(lambda b: b[:-1]), "truncated"),
    ("flipped byte in frame 2", _flip_in_frame(2), r"frame 2"),
    ("image missing", lambda s: setattr(s.proxy, "faults", [Fault(".usr.img.zst", "status",
                                                                  code=404)]), "HTTP 404"),
    ("kernel of another image", _kernel_of_another_image,
     "does not match its signed length or hash"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "setup", "pattern"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_safely(site: Site, name: str, setup: Setup, pattern: str) -> None:
    m = Machine(site)
    booted_bits = sgdisk_attributes(m.disk, A)
    setup(site)
    proc = m.update()
    one_line_error(proc, pattern)
    assert sgdisk_attributes(m.disk, A) == booted_bits
    p, t, s = (sgdisk_attributes(m.disk, B) >> shift & 0xF for shift in (48, 52, 56))
    assert (p, t, s & 1) == (0, 0, 0)
    assert not (m.esp / "flatcar" / "vmlinuz-b").exists()


def test_an_image_larger_than_the_slot_is_refused_before_writing(site: Site) -> None:
    m = Machine(site, usr_mib=2)  # release 2 is more than 3 MiB
    booted_bits = sgdisk_attributes(m.disk, A)
    before = m.slot_bytes(B, 2 * MiB)
    one_line_error(m.update(), r"the image is \d+ bytes, .* holds only 2097152")
    assert m.slot_bytes(B, 2 * MiB) == before and sgdisk_attributes(m.disk, A) == booted_bits


def test_a_downgrade_is_refused_unless_allowed(site: Site, cgpt_field: CgptField) -> None:
    m = Machine(site, booted="2")
    one_line_error(m.update("--version", "1"), "release 1 is older than the booted 2")
    proc = m.update("--version", "1", "--allow-downgrade")
    assert proc.returncode == 0, proc.stderr
    assert prio_tries_good(cgpt_field, m.disk, B) == (2, 1, 0)


def test_the_booted_slot_must_be_known(site: Site) -> None:
    m = Machine(site)
    exe = ROOT / ".venv" / "bin" / "updater"
    proc = subprocess.run(
        [str(exe), "--config", str(m.config), "--disk", str(m.disk), "--esp", str(m.esp),
         "update", "--repo", site.proxy.url, "--trusted-root", str(site.trusted_root),
         "--state-dir", str(m.state)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    one_line_error(proc, "the booted slot is unknown")
    assert os.path.getsize(m.disk) > 0

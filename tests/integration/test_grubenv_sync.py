"""The ESP's grubenv follows every GPT change, and tries GRUB consumed there come back into the
GPT; a stale block is never trusted. Real FAT filesystem (mtools), grub-editenv, cgpt."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from updater import bootfs, cli, gpt, grubenv, slots, state, target
from updater.espenv import COPIES

from .conftest import CgptField, Cli, need_tools, tool

pytestmark = pytest.mark.integration

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
HASH_A = "a" * 64


def esp_offset(disk: Path) -> int:
    with gpt.locked(str(disk), writable=False) as d:
        t = gpt.read_table(d)
    esp = next(e for e in t.used_entries() if e.name == "EFI-SYSTEM")
    return esp.first_lba * t.sector_size


def mtool(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **MTOOLS_ENV})


def read_env_file(disk: Path, tmp: Path) -> Path:
    out = tmp / "grubenv"
    out.unlink(missing_ok=True)
    mtool("mcopy", "-n", "-i", f"{disk}@@{esp_offset(disk)}", "::/flatcar/grubenv", str(out))
    return out


def write_env_file(disk: Path, src: Path) -> None:
    mtool("mcopy", "-o", "-i", f"{disk}@@{esp_offset(disk)}", str(src), "::/flatcar/grubenv")


def grub_saves(disk: Path, tmp: Path, assignment: str) -> None:
    """What GRUB's save_env does to the block on the ESP, done with grub-editenv."""
    env_file = read_env_file(disk, tmp)
    tool("grub-editenv", str(env_file), "set", assignment)
    write_env_file(disk, env_file)


def grub_list(path: Path) -> dict[str, str]:
    out = tool("grub-editenv", str(path), "list")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def grub_disk(flatcar_disk: Path, fast_tmp: Path) -> Path:
    """The Flatcar-layout disk with a FAT ESP holding a grubenv rendered from its GPT."""
    need_tools("mformat", "mcopy", "grub-editenv")
    image = f"{flatcar_disk}@@{esp_offset(flatcar_disk)}"
    mtool("mformat", "-i", image, "-v", "EFI-SYSTEM", "::")
    mtool("mmd", "-i", image, "::/flatcar")
    st = state.load(target.resolve(str(flatcar_disk), "A"))
    block = fast_tmp / "initial-grubenv"
    block.write_bytes(grubenv.render(grubenv.slot_vars(st.slots, {"A": HASH_A})))
    mtool("mcopy", "-i", image, str(block), "::/flatcar/grubenv")
    return flatcar_disk


def test_every_change_rewrites_the_grubenv(grub_disk: Path, cli: Cli, fast_tmp: Path) -> None:
    d = str(grub_disk)
    out = json.loads(cli("--disk", d, "--booted", "A", "set-active", "B", "--json").stdout)
    assert out["grubenv_written"] is True
    env = grub_list(read_env_file(grub_disk, fast_tmp))  # GRUB's own tool reads our block
    assert (env["usr_b_priority"], env["usr_b_tries"], env["usr_b_successful"]) == ("2", "1", "0")
    assert (env["usr_a_priority"], env["usr_a_successful"], env["usr_a_hash"]) == ("1", "1", HASH_A)
    assert env["usr_b_partuuid"] == "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
    assert env["usr_sync"] == grubenv.sync_token(state.load(target.resolve(d, "A")).slots)


def test_tries_grub_consumed_come_back_into_the_gpt(
    grub_disk: Path, cli: Cli, fast_tmp: Path, cgpt_field: CgptField
) -> None:
    d = str(grub_disk)
    cli("--disk", d, "--booted", "A", "set-active", "B", "--tries", "3")
    # GRUB boots B on trial: save_env writes usr_b_tries=2, nothing else
    grub_saves(grub_disk, fast_tmp, "usr_b_tries=2")
    assert cgpt_field(grub_disk, 4, "T") == 3
    doc = json.loads(cli("--disk", d, "--booted", "B", "status", "--json").stdout)
    assert [s["tries"] for s in doc["slots"]] == [0, 2]  # status shows it, writes nothing
    assert cgpt_field(grub_disk, 4, "T") == 3
    out = json.loads(cli("--disk", d, "--booted", "B", "sync", "--json").stdout)
    assert out["grub_consumed"] == [4] and out["grubenv_written"] is True
    assert cgpt_field(grub_disk, 4, "T") == 2
    env = grub_list(read_env_file(grub_disk, fast_tmp))
    synced = grubenv.sync_token(state.load(target.resolve(d)).slots)
    assert env["usr_b_tries"] == "2" and env["usr_sync"] == synced
    # nothing left to do
    out = json.loads(cli("--disk", d, "--booted", "B", "sync", "--json").stdout)
    assert out["grub_consumed"] == [] and out["grubenv_written"] is False


def test_a_stale_grubenv_is_rewritten_not_trusted(
    grub_disk: Path, cli: Cli, fast_tmp: Path, cgpt_field: CgptField
) -> None:
    d = str(grub_disk)
    cli("--disk", d, "--booted", "A", "set-active", "B", "--tries", "3")
    grub_saves(grub_disk, fast_tmp, "usr_b_tries=0")
    # the GPT changes behind the block's back (as if a write was cut before the block was)
    tool("cgpt", "add", "-i", "4", "-T", "5", d)
    out = json.loads(cli("--disk", d, "--booted", "A", "sync", "--json").stdout)
    assert out["grub_consumed"] == [] and out["grubenv_written"] is True
    assert cgpt_field(grub_disk, 4, "T") == 5
    assert grub_list(read_env_file(grub_disk, fast_tmp))["usr_b_tries"] == "5"


def test_damaged_grubenv_is_rebuilt_with_hashes_from_the_kernels(
    grub_disk: Path, cli: Cli, fast_tmp: Path
) -> None:
    kernel = bytearray(4096)
    kernel[0x40 : 0x40 + 64] = b"c" * 64
    (fast_tmp / "vmlinuz-b").write_bytes(bytes(kernel))
    mtool("mcopy", "-i", f"{grub_disk}@@{esp_offset(grub_disk)}", str(fast_tmp / "vmlinuz-b"),
          "::/flatcar/vmlinuz-b")  # fmt: skip
    junk = fast_tmp / "junk"
    junk.write_bytes(b"garbage" * 100)
    write_env_file(grub_disk, junk)
    out = json.loads(cli("--disk", str(grub_disk), "--booted", "A", "sync", "--json").stdout)
    assert out["grubenv_written"] is True
    env = grub_list(read_env_file(grub_disk, fast_tmp))
    assert env["usr_a_priority"] == "1"
    assert env["usr_a_hash"] == ""  # no kernel for A on this ESP and the old block is gone
    assert env["usr_b_hash"] == "c" * 64  # read from USR-B's kernel


def test_disk_without_esp_filesystem_is_untouched(flatcar_disk: Path, cli: Cli) -> None:
    out = json.loads(cli("--disk", str(flatcar_disk), "--booted", "A", "sync", "--json").stdout)
    assert out["grubenv_written"] is False and out["sectors_written"] == 0
    assert slots.choose_next(state.load(target.resolve(str(flatcar_disk))).slots) is not None


def grub_reads(esp: Path, rel: str) -> bytes | None:
    """The file as GRUB's own FAT driver reads it (grub-fstest on the ESP's filesystem), or
    None when GRUB finds none."""
    proc = subprocess.run(["grub-fstest", str(esp), "cat", f"(loop0)/{rel}"], capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def test_power_cut_while_the_grubenv_is_rewritten_on_fat(
    grub_disk: Path, fast_tmp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The real rewrite (mtools: temporary name, fsync, rename, fsync; for each copy, the copy
    in use last) recorded at each fsync. Within a phase between two fsyncs the sectors may reach
    the disk in any order: every subset of the phase's changed sectors is written, and each
    sector is torn in half with the rest of the phase written or none of it. GRUB's own FAT
    driver must find a complete copy holding the old or the new state every time."""
    need_tools("grub-fstest")
    d = str(grub_disk)
    cli.main(["--disk", d, "--booted", "A", "sync"])  # both copies, framed
    start, size = esp_offset(grub_disk), 4 * 1024 * 1024
    snapshots: list[bytes] = []
    real_fsync = bootfs._fsync

    def snapshot() -> None:
        with grub_disk.open("rb") as f:
            f.seek(start)
            snapshots.append(f.read(size))

    def fsync(path: str) -> None:
        real_fsync(path)
        snapshot()

    snapshot()
    monkeypatch.setattr(bootfs, "_fsync", fsync)
    assert cli.main(["--disk", d, "--booted", "A", "set-active", "B"]) == 0
    capsys.readouterr()
    assert len(snapshots) == 1 + 2 * len(COPIES)  # temporary copy, rename; for each copy

    def state_in(image: bytes) -> dict[str, str] | None:
        probe = fast_tmp / "esp.img"
        probe.write_bytes(image)
        copies = [grubenv.EnvCopy.of(grub_reads(probe, rel)) for rel in COPIES]
        chosen = grubenv.choose(copies)
        return None if chosen is None else copies[chosen].payload()

    old, new = state_in(snapshots[0]), state_in(snapshots[-1])
    assert old is not None and new is not None and old != new
    assert new["usr_b_tries"] == "1" and old["usr_b_tries"] == "0"
    ss, seen = 512, 0
    for before, end in zip(snapshots, snapshots[1:], strict=False):
        changed = [i for i in range(len(before) // ss)
                   if before[i * ss : (i + 1) * ss] != end[i * ss : (i + 1) * ss]]  # fmt: skip
        assert 0 < len(changed) <= 8, changed
        cuts: list[tuple[list[int], int | None]]
        cuts = [([lba for bit, lba in enumerate(changed) if mask >> bit & 1], None)
                for mask in range(1 << len(changed))]  # fmt: skip
        for lba in changed:
            cuts += [([], lba), ([other for other in changed if other != lba], lba)]
        for chosen, torn in cuts:
            image = bytearray(before)
            for lba in chosen:
                image[lba * ss : (lba + 1) * ss] = end[lba * ss : (lba + 1) * ss]
            if torn is not None:
                half = torn * ss + ss // 2
                image[torn * ss : half] = end[torn * ss : half]
            seen += 1
            assert state_in(bytes(image)) in (old, new), (chosen, torn)
    print(f"grubenv sweep: {seen} cut states over {len(snapshots) - 1} phases")

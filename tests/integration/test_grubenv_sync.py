"""The ESP's grubenv follows every GPT change, and tries GRUB consumed there come back into the
GPT; a stale block is never trusted. Real FAT filesystem (mtools), grub-editenv, cgpt."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from updater import gpt, grubenv, slots, state, target

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

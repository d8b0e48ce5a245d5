"""The exact commands `updater kexec` / `reboot` run, with fake kexec, systemctl and friends on
PATH that log their arguments; a real disk image with a FAT ESP and an ext4 OEM partition.
Prepared reboots (``kexec --prepare``, ``--consume-prepared``) at the end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from updater import bootflow, bootplan, cli, gpt, kexec, prepared, state, target
from updater.kexec import KexecSupport

from .conftest import CgptField, Cli, need_tools, sha

pytestmark = pytest.mark.integration

HASH_A = "a" * 64
HASH_B = "b" * 64
OK = KexecSupport(tool=True, load_disabled=False, lockdown="none", systemd=True)
# The fakes read their settings from fake.env beside them: updater runs its tools in an
# environment built from scratch, so variables exported by the test never reach them.
FAKE = """#!/bin/bash
. "$(dirname "$0")/fake.env"
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >> "$FAKE_LOG"
case "$(basename "$0") $*" in
  "kexec -s"*) [ -n "$FAKE_TERM_PARENT" ] && kill -TERM "$PPID"
               [ -n "$FAKE_FAIL_S" ] && { echo "$FAKE_FAIL_S" >&2; exit 1; } ;;
  "systemctl kexec") [ -n "$FAKE_FAIL_JUMP" ] && { echo "$FAKE_FAIL_JUMP" >&2; exit 1; } ;;
  "systemctl is-system-running") echo "${FAKE_MANAGER:-running}" ;;
  "kexec -c"*) [ -n "$FAKE_FAIL_C" ] && { echo "$FAKE_FAIL_C" >&2; exit 1; } ;;
esac
exit 0
"""


def kernel(root_hash: str) -> bytes:
    data = bytearray(os.urandom(8192))
    data[0x40 : 0x40 + 64] = root_hash.encode()
    return bytes(data)


@pytest.fixture
def boot_disk(flatcar_disk: Path, fast_tmp: Path) -> Path:
    need_tools("mformat", "mcopy", "mkfs.ext4", "debugfs")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    with gpt.locked(str(flatcar_disk), writable=False) as d:
        t = gpt.read_table(d)
    by = {e.name: e for e in t.used_entries()}
    esp = f"{flatcar_disk}@@{by['EFI-SYSTEM'].first_lba * 512}"
    subprocess.run(["mformat", "-i", esp, "::"], check=True, env=env)
    subprocess.run(["mmd", "-i", esp, "::/flatcar"], check=True, env=env)
    for name, data in (
        ("vmlinuz-a", kernel(HASH_A)),
        ("vmlinuz-b", kernel(HASH_B)),
        ("initrd-a", b"initrd a"),
        ("initrd-b", b"initrd b"),
        ("first_boot", b""),
    ):
        src = fast_tmp / name
        src.write_bytes(data)
        subprocess.run(["mcopy", "-i", esp, str(src), f"::/flatcar/{name}"], check=True, env=env)
    make_oem(flatcar_disk, fast_tmp, b'set oem_id="qemu"\nset linux_append="updater.test=1"\n')
    return flatcar_disk


def make_oem(disk: Path, tmp: Path, grub_cfg: bytes) -> None:
    """A fresh ext4 OEM partition holding ``grub_cfg`` (what any OEM image could ship)."""
    oem_dir = tmp / "oem"
    oem_dir.mkdir(exist_ok=True)
    (oem_dir / "grub.cfg").write_bytes(grub_cfg)
    with gpt.locked(str(disk), writable=False) as d:
        oem = next(e for e in gpt.read_table(d).used_entries() if e.name == "OEM")
    size_kib = (oem.last_lba - oem.first_lba + 1) * 512 // 1024
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "OEM", "-d", str(oem_dir), "-E",
         f"offset={oem.first_lba * 512}", str(disk), f"{size_kib}k"],
        check=True,
    )  # fmt: skip


@pytest.fixture
def fakes(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = fast_tmp / "bin"
    bindir.mkdir()
    for name in ("kexec", "systemctl", "sync", "mount", "reboot"):
        (bindir / name).write_text(FAKE)
        (bindir / name).chmod(0o755)
    log = fast_tmp / "commands.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    fake_settings(log, FAKE_LOG=str(log))
    monkeypatch.setattr(bootflow, "STAGE_DIR", str(fast_tmp / "stage"))
    return log


def fake_settings(log: Path, **values: str) -> None:
    """Add shell assignments to the fakes' fake.env (bin/ beside the log)."""
    with (log.parent / "bin" / "fake.env").open("a") as f:
        f.writelines(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def logged(log: Path) -> list[list[str]]:
    return [shlex.split(line) for line in log.read_text().splitlines()]


def use(monkeypatch: pytest.MonkeyPatch, support: KexecSupport) -> None:
    monkeypatch.setattr(kexec, "probe_support", lambda: support)


def test_kexec_loads_consumes_the_try_then_jumps(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField, fast_tmp: Path,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    assert (
        run_cli(["--disk", d, "--booted", "A", "set-active", "B", "--tries", "2"], capsys)[0] == 0
    )
    code, out, _ = run_cli(["--disk", d, "--booted", "A", "kexec", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    stage = fast_tmp / "stage"
    uuid_b = state.load(target.resolve(d)).slot(4).partuuid
    expected_cmdline = (
        "BOOT_IMAGE=/flatcar/vmlinuz-b rootflags=rw mount.usrflags=ro consoleblank=0 "
        "root=LABEL=ROOT panic=10 console=ttyS0,115200n8 console=tty0 flatcar.first_boot=detected "
        "flatcar.oem.id=qemu updater.test=1 mount.usr=/dev/mapper/usr "
        f"verity.usr=PARTUUID={uuid_b} verity.usrhash={HASH_B}"
    )
    assert doc["cmdline"] == expected_cmdline
    assert (doc["slot"], doc["partition"], doc["method"], doc["tries_left"]) == (
        "B",
        4,
        "kexec_file_load",
        1,
    )
    assert logged(fakes) == [
        ["kexec", "-u"],
        ["kexec", "-s", "-l", f"{stage}/flatcar_vmlinuz-b", f"--initrd={stage}/flatcar_initrd-b",
         f"--append={expected_cmdline}"],
        ["systemctl", "kexec"],
    ]  # fmt: skip
    assert (stage / "flatcar_vmlinuz-b").read_bytes()[0x40 : 0x40 + 64] == HASH_B.encode()
    assert cgpt_field(boot_disk, 4, "T") == 1  # consumed durably before the jump


def test_dry_run_prints_the_plan_and_changes_nothing(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    before = sha(boot_disk)
    code, out, _ = run_cli(["--disk", str(boot_disk), "kexec", "--dry-run", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["slot"] == "A" and doc["partition"] == 3
    assert set(doc) >= {"slot", "partition", "kernel", "initrd", "cmdline", "commands"}
    assert doc["commands"][0] == ["kexec", "-u"] and doc["commands"][-1] == ["systemctl", "kexec"]
    assert f"verity.usrhash={HASH_A}" in doc["cmdline"]
    assert logged(fakes) == [] and sha(boot_disk) == before



def test_dry_run_reads_the_kernels_head_not_the_kernel(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    """With a 1.5 MiB kernel and a 1.5 MiB initrd on the ESP, a dry run reads a small fraction of
    either (the GPT, the FAT windows and directories, the kernel's first cluster, the OEM
    grub.cfg); a real plan reads both whole, as the staging needs them."""
    use(monkeypatch, OK)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    with gpt.locked(str(boot_disk), writable=False) as d:
        by = {e.name: e for e in gpt.read_table(d).used_entries()}
    esp = f"{boot_disk}@@{by['EFI-SYSTEM'].first_lba * 512}"
    big = 3 << 19  # the test disk's ESP is 4 MiB
    for name, data in (("vmlinuz-a", kernel(HASH_A) + os.urandom(big)),
                       ("initrd-a", os.urandom(big))):  # fmt: skip
        src = fast_tmp / name
        src.write_bytes(data)
        subprocess.run(["mcopy", "-o", "-i", esp, str(src), f"::/flatcar/{name}"], check=True,
                       env=env)  # fmt: skip
    read: list[int] = []
    real_pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        data = real_pread(fd, length, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counted)
    code, out, _ = run_cli(["--disk", str(boot_disk), "kexec", "--dry-run", "--json"], capsys)
    assert code == 0 and f"verity.usrhash={HASH_A}" in json.loads(out)["cmdline"]
    assert 0 < sum(read) < big // 8, sum(read)
    read.clear()
    t = target.resolve(str(boot_disk), "A")
    plan = bootplan.plan_boot(state.load(t), "A", t)
    assert len(plan.kernel_data) == big + 8192 and len(plan.initrd_data) == big
    assert sum(read) >= 2 * big


@pytest.mark.parametrize(
    ("support", "fail_s", "fail_c", "expected_loads", "method"),
    [
        (OK, "kexec_file_load failed: Function not implemented", "", ["-s", "-c"], "kexec_load"),
        (KexecSupport(True, False, "integrity", True),
         "kexec_file_load failed: Function not implemented", "", ["-s"], "firmware"),
        (OK, "kexec_file_load failed: Operation not permitted", "", ["-s"], "firmware"),
        (OK, "kexec_file_load failed: Device or resource busy", "", ["-s"], "firmware"),
        (OK, "kexec_file_load failed: Function not implemented",
         "kexec_load failed: Operation not permitted", ["-s", "-c"], "firmware"),
        (KexecSupport(True, True, "none", True), "", "", [], "firmware"),
        (KexecSupport(False, False, "none", True), "", "", [], "firmware"),
    ],
)  # fmt: skip
def test_fallbacks_by_error_class(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
    support: KexecSupport, fail_s: str, fail_c: str, expected_loads: list[str], method: str,
) -> None:  # fmt: skip
    use(monkeypatch, support)
    fake_settings(fakes, FAKE_FAIL_S=fail_s, FAKE_FAIL_C=fail_c)
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    code, _, err = run_cli(["--disk", d, "--booted", "A", "reboot"], capsys)
    assert code == 0
    calls = logged(fakes)
    loads = [c[1] for c in calls if c[0] == "kexec" and "-l" in c]
    assert loads == expected_loads
    if method == "firmware":
        assert calls[-2:] == [["kexec", "-u"], ["systemctl", "reboot"]]
        assert "rebooting through the firmware into USR-B" in err and err.count("\n") == 1
        assert cgpt_field(boot_disk, 4, "T") == 1  # GRUB will consume the try, not us
    else:
        assert calls[-1] == ["systemctl", "kexec"]
        assert cgpt_field(boot_disk, 4, "T") == 0


def test_reboot_via_firmware(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    code, _, err = run_cli(["--disk", str(boot_disk), "reboot", "--via", "firmware"], capsys)
    assert code == 0 and logged(fakes) == [["kexec", "-u"], ["systemctl", "reboot"]]
    assert "USR-A" in err


def test_force_skips_the_clean_shutdown(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    code, _, _ = run_cli(["--disk", str(boot_disk), "kexec", "--force"], capsys)
    assert code == 0
    assert logged(fakes)[-3:] == [["sync"], ["mount", "-o", "remount,ro", "/"], ["kexec", "-e"]]


def test_initrd_delivery_keeps_the_cmdline_stable(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    need_tools("bsdtar")
    use(monkeypatch, OK)
    conf = fast_tmp / "updater.toml"
    conf.write_text('[boot]\ndelivery = "initrd"\n')
    d = str(boot_disk)
    lines = []
    for slot in ("A", "B"):
        if slot == "B":
            assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
        code, out, _ = run_cli(["--disk", d, "kexec", "--config", str(conf), "--json"], capsys)
        assert code == 0
        doc = json.loads(out)
        assert doc["slot"] == slot
        lines.append(doc["cmdline"])
        combined = fast_tmp / "stage" / "initrd-with-facts"
        data = combined.read_bytes()
        assert data.startswith(f"initrd {slot.lower()}".encode())
        listing = subprocess.run(["bsdtar", "-tf", str(fast_tmp / "stage" / "boot-facts.cpio")],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "etc/updater/boot-facts.env" in listing
        assert f"UPDATER_SLOT={slot}".encode() in data
    assert lines[0] == lines[1]


def test_bad_config_is_one_line_and_changes_nothing(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    conf = fast_tmp / "updater.toml"
    conf.write_text('[boot]\ndelivery = "pigeon"\n')
    before = sha(boot_disk)
    code, _, err = run_cli(["--disk", str(boot_disk), "kexec", "--config", str(conf)], capsys)
    assert code == 2 and "[boot] delivery must be one of cmdline, initrd" in err
    assert err.count("\n") == 1
    assert logged(fakes) == [] and sha(boot_disk) == before


# --- the boot hardening ----------------------------------------------------------------------


def test_failed_jump_gives_the_try_back(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    """systemctl kexec refused (an inhibitor): the try must not be lost silently."""
    use(monkeypatch, OK)
    fake_settings(fakes, FAKE_FAIL_JUMP='Operation inhibited by "sshd" (PID 1)')
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    code, _, err = run_cli(["--disk", d, "--booted", "A", "kexec"], capsys)
    assert code == 1 and err.count("\n") == 2  # the kexec line, then the one error line
    assert "gave the boot try of USR-B back (tries 1)" in err and "inhibited" in err
    assert cgpt_field(boot_disk, 4, "T") == 1
    asked = [["systemctl", "is-system-running"]] * 3  # the system keeps running: undone
    assert logged(fakes)[-5:] == [["systemctl", "kexec"], *asked, ["kexec", "-u"]]


def test_a_jump_that_fails_while_the_system_goes_down_keeps_the_kernel(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    """systemctl kexec queued the shutdown and then failed (seen in the VM: the bus it talks to
    stopped by that shutdown): the kernel stays loaded and the try stays taken, or the shutdown
    would reboot through the firmware into a trial the flow thinks it gave back."""
    use(monkeypatch, OK)
    fake_settings(fakes, FAKE_FAIL_JUMP="Failed to connect to bus: No such file or directory",
                  FAKE_MANAGER="stopping")  # fmt: skip
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    code, _, err = run_cli(["--disk", d, "--booted", "A", "kexec"], capsys)
    assert code == 0 and "the kernel stays loaded" in err, err
    assert cgpt_field(boot_disk, 4, "T") == 0
    calls = logged(fakes)
    assert calls[-2:] == [["systemctl", "kexec"], ["systemctl", "is-system-running"]]
    assert ["kexec", "-u"] not in calls[calls.index(["systemctl", "kexec"]) :]


def test_failed_consumption_unloads_the_kernel(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0

    def write_error(*args: object, **kwargs: object) -> state.Outcome:
        raise OSError(5, "Input/output error", d)

    monkeypatch.setattr(state, "change", write_error)
    code, _, err = run_cli(["--disk", d, "--booted", "A", "kexec"], capsys)
    assert code == 1 and "Input/output error" in err
    calls = logged(fakes)
    assert calls[-1] == ["kexec", "-u"] and ["systemctl", "kexec"] not in calls
    assert cgpt_field(boot_disk, 4, "T") == 1


def test_sigterm_after_the_load_unloads_the_kernel(
    boot_disk: Path, fakes: Path, cli: Cli, cgpt_field: CgptField, fast_tmp: Path
) -> None:
    """The load succeeds and a SIGTERM arrives right after it: the kernel is unloaded, the
    try is not consumed, and the exit status says how it ended."""
    fake_settings(fakes, FAKE_TERM_PARENT="1")
    d = str(boot_disk)
    cli("--disk", d, "--booted", "A", "set-active", "B")
    fakes.write_text("")
    proc = cli("--disk", d, "--booted", "A", "kexec", check=False)
    assert proc.returncode == 128 + 15, proc.stderr
    calls = logged(fakes)
    loads = [i for i, c in enumerate(calls) if c[:2] == ["kexec", "-s"]]
    assert loads and calls[loads[-1] + 1 :] == [["kexec", "-u"]], calls
    assert cgpt_field(boot_disk, 4, "T") == 1


def test_firmware_reboot_never_boots_another_slot_than_named(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    before = sha(boot_disk)
    code, _, err = run_cli(
        ["--disk", d, "--booted", "A", "reboot", "--via", "firmware", "--slot", "A"], capsys
    )
    assert code == 1 and err.count("\n") == 1
    assert "GRUB would boot USR-B, not USR-A" in err and "prioritize A" in err
    assert logged(fakes) == [] and sha(boot_disk) == before
    code, _, err = run_cli(
        ["--disk", d, "--booted", "A", "reboot", "--via", "firmware", "--slot", "other"], capsys
    )
    assert code == 0 and logged(fakes) == [["kexec", "-u"], ["systemctl", "reboot"]]


def test_mounted_esp_kernel_is_loaded_from_the_copy_the_hash_came_from(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    esp = fast_tmp / "mounted-esp" / "flatcar"
    esp.mkdir(parents=True)
    (esp / "vmlinuz-a").write_bytes(kernel(HASH_A))
    code, out, _ = run_cli(["--disk", str(boot_disk), "--esp", str(esp.parent), "kexec",
                            "--json"], capsys)  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    staged = Path(doc["kernel"])
    assert staged.parent == fast_tmp / "stage", doc["kernel"]
    assert staged.read_bytes() == (esp / "vmlinuz-a").read_bytes()
    load = next(c for c in logged(fakes) if c[:2] == ["kexec", "-s"])
    assert load[3] == str(staged)


@pytest.mark.parametrize(
    ("grub_cfg", "note"),
    [
        (b'set oem_id="qemu"\nset linux_append="a\0b"\n', "control character"),
        (b'set oem_id="qemu\nset linux_append=x\n', "unterminated"),
        (b"set linux_append=$(reboot)\n", "nothing is executed"),
        (b'set oem_id="a b"\n', "leaving out the OEM id"),
    ],
)
def test_damaged_oem_grub_cfg_never_stops_the_reboot(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path, grub_cfg: bytes, note: str,
) -> None:  # fmt: skip
    """GRUB would boot with such a file; so does the kexec, with one line saying what it left."""
    use(monkeypatch, OK)
    make_oem(boot_disk, fast_tmp, grub_cfg)
    code, out, err = run_cli(["--disk", str(boot_disk), "kexec", "--json"], capsys)
    assert code == 0, err
    assert note in err and err.count("\n") == 1 and "Traceback" not in err
    doc = json.loads(out)
    assert "\0" not in doc["cmdline"] and logged(fakes)[-1] == ["systemctl", "kexec"]


def test_oem_cannot_steer_the_initrd_to_another_partition(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fast_tmp: Path,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    evil = "-- verity.usr=PARTUUID=00000000-0000-0000-0000-000000000bad verity.usrhash=" + "f" * 64
    make_oem(boot_disk, fast_tmp, f'set linux_append="{evil} VERITY.USR=x"\n'.encode())
    d = str(boot_disk)
    code, out, err = run_cli(["--disk", d, "kexec", "--dry-run", "--json"], capsys)
    assert code == 0 and "left out arguments" in err and "000000000bad" in err
    words = json.loads(out)["cmdline"].split()
    uuid_a = state.load(target.resolve(d)).slot(3).partuuid
    usr = [w for w in words if w.lower().startswith(("verity.usr=", "verity.usrhash="))]
    assert usr == [f"verity.usr=PARTUUID={uuid_a}", f"verity.usrhash={HASH_A}"]
    assert words[-3:] == [*usr, "--"]  # the OEM's "--" passes, its words after it do not


@pytest.mark.parametrize(("via", "last"), [("kexec", ["systemctl", "kexec"]),
                                           ("firmware", ["systemctl", "reboot"])])  # fmt: skip
def test_rollback_with_reboot_switches_then_reboots_into_the_other_slot(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField, fast_tmp: Path,
    via: str, last: list[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    assert run_cli(["--disk", d, "--booted", "B", "mark-good"], capsys)[0] == 0
    # B booted and good, A good below it: the operator goes back to A (whose test image holds
    # no filesystem, hence --force) and reboots in the same command.
    code, _, err = run_cli(
        ["--disk", d, "--booted", "B", "rollback", "--force", "--reboot", via], capsys
    )
    assert code == 0, err
    assert (cgpt_field(boot_disk, 3, "P"), cgpt_field(boot_disk, 4, "P")) == (2, 1)
    calls = logged(fakes)
    assert calls[-1] == last
    if via == "kexec":
        loads = [c for c in calls if c[:3] == ["kexec", "-s", "-l"]]
        assert len(loads) == 1 and loads[0][3].endswith("flatcar_vmlinuz-a")
    else:
        assert not any(c[:2] == ["kexec", "-s"] for c in calls)


def test_rollback_without_reboot_runs_nothing(
    boot_disk: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    assert run_cli(["--disk", d, "--booted", "A", "set-active", "B"], capsys)[0] == 0
    assert run_cli(["--disk", d, "--booted", "B", "mark-good"], capsys)[0] == 0
    assert run_cli(["--disk", d, "--booted", "B", "rollback", "--force"], capsys)[0] == 0
    assert logged(fakes) == []


# Prepared kexec reboots: `kexec --prepare` loads and counts nothing, `--consume-prepared`
# counts the try exactly once or unloads when the A/B state moved, and `updater kexec` drops a
# prepared record so that its own jump is not counted twice.


@pytest.fixture
def run_dir(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The record, staging directory and the kernel's kexec_loaded flag under a test directory."""
    run = fast_tmp / "run"
    run.mkdir()
    monkeypatch.setattr(prepared, "RECORD", str(run / "kexec-prepared.json"))
    monkeypatch.setattr(prepared, "STAGE_DIR", str(run / "kexec-prepared"))
    monkeypatch.setattr(prepared, "KEXEC_LOADED", str(run / "kexec_loaded"))
    return run


def loaded(run: Path, value: bool) -> None:
    (run / "kexec_loaded").write_text("1\n" if value else "0\n")


def on_trial(disk: str, capsys: pytest.CaptureFixture[str], tries: int = 2) -> None:
    args = ["--disk", disk, "--booted", "A", "set-active", "B", "--tries", str(tries)]
    assert run_cli(args, capsys)[0] == 0


def prepare_b(
    disk: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """B on trial with two tries, and its boot prepared."""
    use(monkeypatch, OK)
    on_trial(str(disk), capsys)
    assert run_cli(["--disk", str(disk), "--booted", "A", "kexec", "--prepare"], capsys)[0] == 0
    return str(disk)


def consume_json(disk: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = run_cli(["--disk", disk, "kexec", "--consume-prepared", "--json"], capsys)
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_prepare_loads_and_counts_nothing_then_shutdown_counts_once(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    code, out, _ = run_cli(["--disk", d, "--booted", "A", "kexec", "--prepare", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["prepared"] is True and doc["slot"] == "USR-B" and doc["partition"] == 4
    assert f"verity.usrhash={HASH_B}" in doc["cmdline"]
    stage = run_dir / "kexec-prepared"
    assert logged(fakes) == [
        ["kexec", "-u"],
        ["kexec", "-s", "-l", f"{stage}/flatcar_vmlinuz-b", f"--initrd={stage}/flatcar_initrd-b",
         f"--append={doc['cmdline']}"],
    ]  # fmt: skip
    assert cgpt_field(boot_disk, 4, "T") == 2  # nothing consumed yet
    assert (run_dir / "kexec-prepared.json").is_file()

    loaded(run_dir, True)
    assert consume_json(d, capsys) == {"action": "consumed", "reason": None, "slot": "USR-B",
                               "partition": 4, "tries_left": 1}  # fmt: skip
    assert cgpt_field(boot_disk, 4, "T") == 1
    assert not (run_dir / "kexec-prepared.json").exists()
    assert logged(fakes)[2:] == []  # no unload: the jump enters the prepared kernel

    # a second shutdown pass (or another target pulling the unit in) counts nothing more
    assert consume_json(d, capsys)["action"] == "none"
    assert cgpt_field(boot_disk, 4, "T") == 1


def test_a_state_change_after_prepare_unloads_instead(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    d = prepare_b(boot_disk, monkeypatch, capsys)
    on_trial(d, capsys, tries=3)  # e.g. a new release activated in B after the preparation
    loaded(run_dir, True)
    doc = consume_json(d, capsys)
    assert doc["action"] == "unloaded" and "changed" in doc["reason"]
    assert logged(fakes)[-1] == ["kexec", "-u"]
    assert cgpt_field(boot_disk, 4, "T") == 3  # GRUB counts it on the firmware reboot
    assert not (run_dir / "kexec-prepared.json").exists()


def test_nothing_loaded_any_more_counts_nothing(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    d = prepare_b(boot_disk, monkeypatch, capsys)
    loaded(run_dir, False)  # someone ran kexec -u: the reboot goes through the firmware
    assert consume_json(d, capsys)["action"] == "not-loaded"
    assert cgpt_field(boot_disk, 4, "T") == 2


def test_a_damaged_record_unloads(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    d = str(boot_disk)
    on_trial(d, capsys)
    (run_dir / "kexec-prepared.json").write_text('{"format": 1, "disk": 3}')
    loaded(run_dir, True)
    doc = consume_json(d, capsys)
    assert doc["action"] == "unloaded" and "not a prepared-kexec record" in doc["reason"]
    assert logged(fakes) == [["kexec", "-u"]]
    assert cgpt_field(boot_disk, 4, "T") == 2


def test_updater_kexec_after_prepare_counts_once(
    boot_disk: Path, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], cgpt_field: CgptField,
) -> None:  # fmt: skip
    d = prepare_b(boot_disk, monkeypatch, capsys)
    assert run_cli(["--disk", d, "--booted", "A", "kexec"], capsys)[0] == 0
    assert cgpt_field(boot_disk, 4, "T") == 1
    assert not (run_dir / "kexec-prepared.json").exists()  # the shutdown unit is skipped
    loaded(run_dir, True)
    assert consume_json(d, capsys)["action"] == "none" and cgpt_field(boot_disk, 4, "T") == 1


def test_prepare_refuses_dry_run_and_force(
    boot_disk: Path, fakes: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in ("--dry-run", "--force"):
        code, _, err = run_cli(["--disk", str(boot_disk), "kexec", "--prepare", extra], capsys)
        assert code == 2 and "--prepare" in err
    assert logged(fakes) == []

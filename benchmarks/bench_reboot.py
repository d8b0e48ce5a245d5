#!/usr/bin/env python3
"""The updater's kexec reboot against a bare kexec of the same kernel, initrd and command line,
and against a firmware reboot, in one QEMU (TCG) machine on the project's test disk.

    .venv/bin/python benchmarks/bench_reboot.py [--rounds 3] [--no-firmware] [--json]

One machine boots through OVMF and GRUB into USR-A. The plan ``updater kexec`` would carry out
is staged once on the root filesystem (the same module call the command makes), so the bare
reboot is ``kexec -s -l KERNEL --initrd=INITRD --append=CMDLINE && systemctl kexec`` with the
very same files and command line. After one warm-up reboot of each kind, the kinds alternate
round by round (so drift of the host, which is shared, touches all of them alike):

- ``updater``: ``updater kexec`` (plan, stage, load, consume the try, ``systemctl kexec``);
- ``prepared``: ``updater kexec --prepare`` first (not timed), then ``systemctl kexec`` (timed;
  updater-kexec-prepared.service counts the try during the shutdown);
- ``bare``: the bare command line above;
- ``firmware``: ``updater reboot --via firmware`` (OVMF and GRUB run again).

Each reboot is split at the new kernel's first console line (``Linux version``): "command ->
new kernel" (the updater's work, the shutdown and the jump) and "new kernel -> ready" (the
``UPDATER-READY`` line of the image). Medians per kind and the ratios to the bare kexec are
printed. Then, in the same machine, the start-up of ``updater --help``, ``updater status`` and
``updater kexec --dry-run`` against ``python3 -c pass`` (medians of several runs each, timed in
the guest). Goals (issue 12): command -> new kernel at most 1.1x the bare kexec, the whole
reboot at most 1.05x; each command within 3x of ``python3 -c pass``. Nothing here asserts a
time: the ratios are printed for the README.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from images.build import build_all  # noqa: E402
from tests.vm import harness  # noqa: E402

READY = r"UPDATER-READY version=(\d+) usr=([0-9a-fA-F-]+)\r?\n"
NEW_KERNEL = r"Linux version \d"
TIMEOUT = 900
STAGE = "/var/lib/updater-bench"

# Runs in the guest: stage what `updater kexec` would load (bootplan.plan_boot, as the command
# calls it) on the root filesystem, which survives the reboots; print the image as JSON.
STAGE_SCRIPT = f"""
import json
from updater import bootplan, config, state, target
t = target.resolve(settings=config.load().boot)
plan = bootplan.plan_boot(state.load(t), "auto", t, {STAGE!r}, copy=True)
image = plan.image()
print(json.dumps({{"kernel": image.kernel, "initrd": image.initrd, "cmdline": image.cmdline,
                  "slot": plan.slot.label}}))
"""

# Runs in the guest: medians of wall time per command, each a fresh process. The commands take
# turns (one run of each per round, after one warm-up round): the emulated machine's speed drifts
# by a fifth within one boot, which a block of runs per command would turn into its ratio.
STARTUP_SCRIPT = """
import json, statistics, subprocess, sys, time
runs = int(sys.argv[1])
commands = {
    "python3 -c pass": ["python3", "-c", "pass"],
    "updater --help": ["updater", "--help"],
    "updater status": ["updater", "status"],
    "updater kexec --dry-run": ["updater", "kexec", "--dry-run"],
}
times = {name: [] for name in commands}
for round in range(runs + 1):
    for name, argv in commands.items():
        start = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if round:
            times[name].append(time.monotonic() - start)
print(json.dumps({name: statistics.median(t) for name, t in times.items()}))
"""


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def guest_script(m: harness.Machine, script: str, args: str = "", timeout: float = 600) -> Any:
    """Run a Python script in the guest (typed as one base64 line) and parse its JSON output."""
    encoded = base64.b64encode(script.encode()).decode()
    path = "/tmp/bench-script.py"
    m.run(f"echo {encoded} | base64 -d > {path}", 60).check()
    out = m.run(f"python3 {path} {args}", timeout).check().output
    return json.loads(out.strip().splitlines()[-1])


def reboot(m: harness.Machine, command: str) -> tuple[float, float, str]:
    """Type ``command`` (which reboots); seconds to the new kernel's first line and from there
    to the ready line, and the USR partition it came up on."""
    since, start = m.console.position(), time.monotonic()
    m.console.write(command + "\n")
    kernel = m.wait_for(NEW_KERNEL, TIMEOUT, since)
    at_kernel = time.monotonic()
    ready = m.wait_for(READY, TIMEOUT, kernel.end())
    at_ready = time.monotonic()
    m.wait_shell(180)
    m.run("dmesg -n 1").check()
    return at_kernel - start, at_ready - at_kernel, ready.group(2).lower()


def run_bench(workdir: Path, rounds: int, firmware: bool, startup_runs: int) -> dict[str, Any]:
    built = build_all()
    config = harness.VmConfig(harness.Firmware(), disk=Path(built.disk))
    with harness.machine(config, workdir / "vm") as m:
        say("cold boot through OVMF and GRUB")
        m.start()
        m.wait_for(READY, TIMEOUT, 0)
        m.wait_shell(180)
        m.run("dmesg -n 1").check()
        image = guest_script(m, STAGE_SCRIPT)
        say(f"staged {image['slot']}: {image['kernel']} {image['initrd']} [{image['cmdline']}]")
        bare = f"kexec -s -l {image['kernel']}"
        if image["initrd"]:
            bare += f" --initrd={image['initrd']}"
        bare += f" --append='{image['cmdline']}' && systemctl kexec"
        # kind -> (untimed preparation, the timed command that reboots)
        kinds: dict[str, tuple[str | None, str]] = {
            "updater": (None, "updater kexec"),
            "prepared": ("updater kexec --prepare", "systemctl kexec"),
            "bare": (None, bare),
        }
        if firmware:
            kinds["firmware"] = (None, "updater reboot --via firmware")
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        landed: set[str] = set()
        for kind, (setup, command) in kinds.items():  # warm-up: caches, first runs; not counted
            say(f"warm-up {kind}: {command}")
            if setup:
                m.run(setup, 300).check()
            landed.add(reboot(m, command)[2])
        for n in range(rounds):
            for kind, (setup, command) in kinds.items():
                if setup:
                    m.run(setup, 300).check()
                to_kernel, to_ready, usr = reboot(m, command)
                landed.add(usr)
                samples[kind].append((to_kernel, to_ready))
                say(f"round {n + 1} {kind}: command -> new kernel {to_kernel:.1f} s, "
                    f"new kernel -> ready {to_ready:.1f} s")  # fmt: skip
        if len(landed) != 1:
            raise harness.VmError(f"the reboots came up on different USR partitions: {landed}")
        startup = guest_script(m, STARTUP_SCRIPT, str(startup_runs))
        m.poweroff()
    return summarize(samples, startup, rounds)


def summarize(
    samples: dict[str, list[tuple[float, float]]], startup: dict[str, float], rounds: int
) -> dict[str, Any]:
    med: dict[str, dict[str, float]] = {}
    for kind, pairs in samples.items():
        med[kind] = {
            "to_kernel": statistics.median(p[0] for p in pairs),
            "to_ready": statistics.median(p[1] for p in pairs),
            "total": statistics.median(p[0] + p[1] for p in pairs),
        }
    ratios = {
        f"{kind}_to_bare_{field}": med[kind][field] / med["bare"][field]
        for kind in ("updater", "prepared")
        for field in ("to_kernel", "to_ready", "total")
    }
    if "firmware" in med:
        ratios["kexec_to_firmware_total"] = med["updater"]["total"] / med["firmware"]["total"]
    python = "python3 -c pass"
    startup_ratios = {n: secs / startup[python] for n, secs in startup.items() if n != python}
    return {
        "rounds": rounds,
        "median_seconds": {k: {f: round(v, 2) for f, v in d.items()} for k, d in med.items()},
        "samples": {k: [[round(a, 2), round(b, 2)] for a, b in v] for k, v in samples.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "startup_seconds": {k: round(v, 3) for k, v in startup.items()},
        "startup_ratios_to_python": {k: round(v, 2) for k, v in startup_ratios.items()},
    }


def describe(result: dict[str, Any]) -> str:
    med, ratios = result["median_seconds"], result["ratios"]
    lines = [f"medians of {result['rounds']} reboots each (QEMU TCG, one machine, alternating):"]
    for kind, d in med.items():
        lines.append(
            f"  {kind:9} command -> new kernel {d['to_kernel']:6.1f} s   "
            f"new kernel -> ready {d['to_ready']:6.1f} s   total {d['total']:6.1f} s"
        )
    for kind, name in (("updater", "updater kexec"), ("prepared", "prepared + systemctl kexec")):
        lines += [
            f"{name} / bare kexec: command -> new kernel {ratios[f'{kind}_to_bare_to_kernel']}x "
            f"(goal 1.1x), new kernel -> ready {ratios[f'{kind}_to_bare_to_ready']}x, "
            f"whole reboot {ratios[f'{kind}_to_bare_total']}x (goal 1.05x)",
        ]
    if "kexec_to_firmware_total" in ratios:
        lines.append(f"updater kexec / firmware reboot: {ratios['kexec_to_firmware_total']}x")
    lines.append("start-up in the guest (median), against python3 -c pass (goal 3x):")
    for name, secs in result["startup_seconds"].items():
        ratio = result["startup_ratios_to_python"].get(name)
        lines.append(f"  {name:25} {secs:6.2f} s" + (f"   {ratio}x" if ratio else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="reboots of each kind (>= 3)")
    parser.add_argument("--startup-runs", type=int, default=5, help="runs per start-up command")
    parser.add_argument("--no-firmware", action="store_true", help="leave the firmware out")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--workdir", type=Path, help="keep the VM files (console logs) here")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    with tempfile.TemporaryDirectory(prefix="updater-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_bench(workdir, args.rounds, not args.no_firmware, args.startup_runs)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

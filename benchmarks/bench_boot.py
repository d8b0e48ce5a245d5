"""Time a cold firmware boot of the A/B disk under QEMU TCG, phase by phase, to UPDATER-READY.

Each run boots a fresh qcow2 overlay of the built disk (so every run is a first boot, as a new
machine's would be) with fresh firmware variables, and reports when each console milestone
appeared, counted from QEMU's start. Nothing is asserted; the numbers are for people.

    .venv/bin/python benchmarks/bench_boot.py [--disk DISK] [--repeat 1] [--json]

Without ``--disk`` the disk comes from ``images/build.py`` (built or taken from its cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make tests.vm importable
    sys.path.insert(0, str(REPO))

from tests.vm import harness  # noqa: E402

# Milestones in boot order: (name, console regex).
MILESTONES = (
    ("grub", r"Booting USR-"),
    ("kernel", r"Linux version \d"),
    ("initrd", r"Run /init as init process"),
    ("first-boot", r"UPDATER-FIRST-BOOT"),
    ("ready", r"UPDATER-READY version=\d+"),
)


def built_disk() -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("updater_images_build", REPO / "images/build.py")
    if spec is None or spec.loader is None:
        raise SystemExit("images/build.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return Path(module.build_all().disk)


def boot_once(disk: Path, workdir: Path, timeout: float) -> dict[str, float | None]:
    times: dict[str, float | None] = {}
    with harness.machine(harness.VmConfig(harness.Firmware(), disk=disk), workdir) as m:
        start = time.monotonic()
        m.start()
        position = 0
        for name, pattern in MILESTONES:
            try:
                found = m.wait_for(
                    pattern, max(1.0, timeout - (time.monotonic() - start)), position
                )
            except harness.VmError:
                times[name] = None  # not printed on this console (or too late): keep going
                continue
            times[name] = round(time.monotonic() - start, 1)
            position = found.end()
        m.wait_shell(120)
        times["shell"] = round(time.monotonic() - start, 1)
        m.kill()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk", type=Path, help="raw disk image (default: images/build.py)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    disk = args.disk or built_disk()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        for i in range(args.repeat):
            runs.append(boot_once(disk, Path(tmp) / f"run-{i}", args.timeout))
    if args.json:
        print(json.dumps({"disk": str(disk), "accel": "tcg", "runs": runs}, sort_keys=True))
        return 0
    print(f"cold firmware boot of {disk} under TCG (seconds from QEMU start)")
    for i, times in enumerate(runs, start=1):
        cells = "  ".join(f"{k}={'-' if v is None else v}" for k, v in times.items())
        print(f"run {i}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

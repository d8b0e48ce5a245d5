#!/usr/bin/env python3
"""Reboot into the other slot: kexec vs firmware, from the reboot command to the new system's
ready line, in the same QEMU (TCG) run on the project's test image. Prints both and the ratio.

    .venv/bin/python benchmarks/bench_reboot.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from images.demo import run_demo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description="kexec vs firmware reboot time under QEMU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="updater-bench-") as tmp:
        result = run_demo(Path(tmp), show=lambda text: None)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(
            f"kexec reboot {result['kexec_reboot_seconds']} s, firmware reboot "
            f"{result['firmware_reboot_seconds']} s, ratio {result['kexec_to_firmware_ratio']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

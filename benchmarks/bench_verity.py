"""Time ``updater verity format`` against ``veritysetup format`` on the same file, same run.

For each size (256 MiB and 1 GiB unless ``--size-mib`` says otherwise) both tools get the same
random data (page cache warmed first), salt and UUID, write a separate hash file, and must
produce identical hash files. Both run as whole commands, interpreter start-up and worker
spawn included, alternately, ``--repeat`` times each; the best time of each counts, and the
ratio updater/veritysetup is printed (the goal: at most 0.7 from 256 MiB up). The library call
(no start-up) is shown as well.

    .venv/bin/python benchmarks/bench_verity.py [--size-mib N ...] [--repeat 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from updater.run import require_tool, run
from updater.verity import VerityParams
from updater.verityfile import compute_tree

SALT = "5a" * 32
UUID = "0badc0de-1234-4321-8765-abcdefabcdef"
GOAL = 0.7


def make_data(path: Path, size_mib: int) -> None:
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    with path.open("rb") as f:  # warm the page cache so that both tools read from memory
        while f.read(8 << 20):
            pass


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = run(argv).stdout.decode()
    return time.perf_counter() - start, out


def measure(
    size_mib: int, repeat: int, directory: str | None, veritysetup: str
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-verity-") as tmp:
        data, ours_hash, their_hash = Path(tmp, "data"), Path(tmp, "ours"), Path(tmp, "theirs")
        make_data(data, size_mib)
        same = ["--salt", SALT, "--uuid", UUID]
        ours_argv = [sys.executable, "-m", "updater", "verity", "format", str(data)]
        ours_argv += ["--hash-file", str(ours_hash), *same, "--json"]
        their_argv = [veritysetup, "format", str(data), str(their_hash), *same]
        ours_times, their_times, library_times = [], [], []
        for _ in range(repeat):
            seconds, out = timed(their_argv)
            their_times.append(seconds)
            their_root = next(
                line.split()[-1] for line in out.splitlines() if line.startswith("Root hash:")
            )
            seconds, out = timed(ours_argv)
            ours_times.append(seconds)
            ours_root = json.loads(out)["root_hash"]
            params = VerityParams(size_mib * 256, bytes.fromhex(SALT))
            start = time.perf_counter()
            library_root = compute_tree(str(data), params).root_hash.hex()
            library_times.append(time.perf_counter() - start)
        if not ours_root == their_root == library_root:
            raise SystemExit(f"root hashes differ: {ours_root} {their_root} {library_root}")
        if ours_hash.read_bytes() != their_hash.read_bytes():
            raise SystemExit("hash files differ")
    return {"veritysetup": min(their_times), "updater": min(ours_times),
            "library": min(library_times)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, action="append", help="data size (repeatable)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tool, best counts")
    parser.add_argument("--dir", default=None, help="where to put the files (default: temp)")
    args = parser.parse_args()
    veritysetup = require_tool("veritysetup", "cryptsetup-bin")
    sizes = args.size_mib or [256, 1024]
    print(f"{os.cpu_count()} CPUs, best of {args.repeat} alternating runs per tool and size; "
          "whole commands, start-up included; hash files identical")  # fmt: skip
    head = ("size", "veritysetup", "updater", "ratio", "library", "ratio")
    print("{:>9} {:>12} {:>9} {:>6} {:>9} {:>6}".format(*head))
    worst = 0.0
    for size in sizes:
        t = measure(size, args.repeat, args.dir, veritysetup)
        ratio = t["updater"] / t["veritysetup"]
        worst = max(worst, ratio)
        print(f"{size:>5} MiB {t['veritysetup']:>10.3f} s {t['updater']:>7.3f} s {ratio:>6.2f} "
              f"{t['library']:>7.3f} s {t['library'] / t['veritysetup']:>6.2f}")  # fmt: skip
    print(f"worst ratio {worst:.2f} (goal: at most {GOAL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time ``updater verity format`` against ``veritysetup format`` on the same file, same run.

For each size (256 MiB and 1 GiB unless ``--size-mib`` says otherwise) both tools get the same
random data (page cache warmed first), salt and UUID, write a separate hash file, and must
produce identical hash files. Both run as whole commands, interpreter start-up and worker
spawn included, in ``--repeat`` pairs (at least 5), the order within a pair alternating. The
updater's bytecode is compiled first, as an installed package has it (with
PYTHONDONTWRITEBYTECODE set, a changed module would otherwise be compiled in every run).
Printed per size: the median time of each tool with its range, and the median of the per-pair
ratios updater/veritysetup with their range (a pair runs back to back, so the ratio is the
figure least moved by other load on the machine); the goal is a median ratio of at most 0.7
from 256 MiB up. The library call (no start-up) is shown as well. The load average before and
after is printed: run it when the machine is quiet.

    .venv/bin/python benchmarks/bench_verity.py [--size-mib N ...] [--repeat 7] [--dir DIR]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import updater
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


def spread(values: list[float], digits: int = 3) -> str:
    """``median (min-max)``."""
    mid, low, high = statistics.median(values), min(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def measure(
    size_mib: int, repeat: int, directory: str | None, veritysetup: str
) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-verity-") as tmp:
        data, ours_hash, their_hash = Path(tmp, "data"), Path(tmp, "ours"), Path(tmp, "theirs")
        make_data(data, size_mib)
        same = ["--salt", SALT, "--uuid", UUID]
        ours_argv = [sys.executable, "-m", "updater", "verity", "format", str(data)]
        ours_argv += ["--hash-file", str(ours_hash), *same, "--json"]
        their_argv = [veritysetup, "format", str(data), str(their_hash), *same]
        ours_times: list[float] = []
        their_times: list[float] = []
        library_times: list[float] = []
        for i in range(repeat):
            for tool in ("theirs", "ours") if i % 2 == 0 else ("ours", "theirs"):
                if tool == "theirs":
                    seconds, out = timed(their_argv)
                    their_times.append(seconds)
                    their_root = next(
                        line.split()[-1]
                        for line in out.splitlines()
                        if line.startswith("Root hash:")
                    )
                else:
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
    return {"veritysetup": their_times, "updater": ours_times, "library": library_times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, action="append", help="data size (repeatable)")
    parser.add_argument("--repeat", type=int, default=7, help="pairs of runs per size (>= 5)")
    parser.add_argument("--dir", default=None, help="where to put the files (default: temp)")
    args = parser.parse_args()
    if args.repeat < 5:
        parser.error("--repeat must be at least 5 (medians of fewer pairs say little)")
    veritysetup = require_tool("veritysetup", "cryptsetup-bin")
    compileall.compile_dir(Path(updater.__file__).parent, quiet=1)
    sizes = args.size_mib or [256, 1024]
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load {load}; {args.repeat} pairs of runs per size, alternating; "
          "whole commands, start-up included; hash files identical")  # fmt: skip
    print("median (min-max) of each; ratio: median (min-max) of the per-pair ratios")
    head = ("size", "veritysetup s", "updater s", "ratio", "library s", "ratio")
    print("{:>8}  {:<21}  {:<21}  {:<16}  {:<21}  {}".format(*head))
    worst = 0.0
    for size in sizes:
        t = measure(size, args.repeat, args.dir, veritysetup)
        pairs = [u / v for u, v in zip(t["updater"], t["veritysetup"], strict=True)]
        library = [u / v for u, v in zip(t["library"], t["veritysetup"], strict=True)]
        worst = max(worst, statistics.median(pairs))
        cells = [spread(t["veritysetup"]), spread(t["updater"]), spread(pairs, 2)]
        cells += [spread(t["library"]), spread(library, 2)]
        print(f"{size:>4} MiB  {cells[0]:<21}  {cells[1]:<21}  {cells[2]:<16}  {cells[3]:<21}  "
              f"{cells[4]}")  # fmt: skip
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"worst median ratio {worst:.2f} (goal: at most {GOAL}); load afterwards {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

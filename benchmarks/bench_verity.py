"""Time ``updater verity format`` against ``veritysetup format`` on the same file, same run.

Both tools get the same random data (page cache warmed first), salt and UUID, write a separate
hash file, and must produce identical hash files; each is run ``--repeat`` times alternately and
the best time is reported, with the library call (no interpreter start-up) shown as well.

    .venv/bin/python benchmarks/bench_verity.py [--size-mib 1024] [--repeat 3] [--dir DIR]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="data size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool, best counts")
    parser.add_argument("--dir", default=None, help="where to put the files (default: temp)")
    args = parser.parse_args()
    veritysetup = require_tool("veritysetup", "cryptsetup-bin")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-verity-") as tmp:
        data, ours_hash, their_hash = Path(tmp, "data"), Path(tmp, "ours"), Path(tmp, "theirs")
        make_data(data, args.size_mib)
        same = ["--salt", SALT, "--uuid", UUID]
        ours_argv = [sys.executable, "-m", "updater", "verity", "format", str(data)]
        ours_argv += ["--hash-file", str(ours_hash), *same, "--json"]
        their_argv = [veritysetup, "format", str(data), str(their_hash), *same]
        ours_times, their_times, library_times = [], [], []
        for _ in range(args.repeat):
            seconds, out = timed(their_argv)
            their_times.append(seconds)
            their_root = next(
                line.split()[-1] for line in out.splitlines() if line.startswith("Root hash:")
            )
            seconds, out = timed(ours_argv)
            ours_times.append(seconds)
            ours_root = json.loads(out)["root_hash"]
            params = VerityParams(args.size_mib * 256, bytes.fromhex(SALT))
            start = time.perf_counter()
            library_root = compute_tree(str(data), params).root_hash.hex()
            library_times.append(time.perf_counter() - start)
        if not ours_root == their_root == library_root:
            sys.stderr.write(f"root hashes differ: {ours_root} {their_root} {library_root}\n")
            return 1
        if ours_hash.read_bytes() != their_hash.read_bytes():
            sys.stderr.write("hash files differ\n")
            return 1

    ours, theirs, library = min(ours_times), min(their_times), min(library_times)
    print(f"data: {args.size_mib} MiB, {os.cpu_count()} CPUs, best of {args.repeat} runs each")
    print(f"hash files identical, root hash {ours_root}")
    print(f"veritysetup format:     {theirs:7.3f} s")
    print(f"updater verity format:  {ours:7.3f} s  (ratio updater/veritysetup {ours / theirs:.2f})")
    print(f"library compute_tree(): {library:7.3f} s  (ratio {library / theirs:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the release client's byte source against ``curl`` on the same file, same server, same run.

A static server (``busybox httpd``, which answers ``Range``) serves a file of random bytes on
127.0.0.1; ``curl -s -o /dev/null`` fetches it, and so does ``TargetSource.open`` over
``HttpFetcher`` (one pooled session, 1 MiB reads, bounded by the length), once from byte 0 and
once resumed from the middle with a ``Range`` request. Each is run ``--repeat`` times
alternately; the best times and their ratio are printed (``--json`` for a machine).

    .venv/bin/python benchmarks/bench_fetch.py [--size-mib 1024] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from updater.fetch.http import HttpFetcher
from updater.fetch.source import TargetSource
from updater.run import require_tool, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def best(fn: Callable[[], int], repeat: int, expected: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - start)
        assert got == expected, (got, expected)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client, best counts")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    busybox = require_tool("busybox", "busybox-static")
    curl = require_tool("curl")
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        size = args.size_mib << 20
        with open(Path(tmp, "usr.img.zst"), "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        port = free_port()
        server = subprocess.Popen(
            [busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", tmp],
            stdin=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/usr.img.zst"
            for _ in range(50):  # until it listens
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            source = TargetSource(HttpFetcher(), "usr.img.zst", url, size)

            def ours(start: int = 0) -> int:
                return sum(len(chunk) for chunk in source.open(start))

            def theirs() -> int:
                out = run([curl, "-s", "-o", "/dev/null", "-w", "%{size_download}", url])
                return int(out.stdout)

            curl_s = best(theirs, args.repeat, size)
            ours_s = best(ours, args.repeat, size)
            half_s = best(lambda: ours(size // 2), args.repeat, size - size // 2)
        finally:
            server.terminate()
            server.wait()
    result = {
        "size_mib": args.size_mib,
        "curl_s": round(curl_s, 3),
        "source_s": round(ours_s, 3),
        "ratio": round(ours_s / curl_s, 2),
        "resumed_half_s": round(half_s, 3),
    }
    if args.json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    else:
        sys.stdout.write(
            f"{args.size_mib} MiB over 127.0.0.1: curl {curl_s:.3f} s, byte source "
            f"{ours_s:.3f} s (ratio {ours_s / curl_s:.2f}), resumed from the middle "
            f"{half_s:.3f} s\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

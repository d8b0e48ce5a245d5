"""Time the slot writer against a plain shell pipeline on the same data, same run, and its memory.

A USR-like image (squashfs-like mixed data: half random, a quarter text-like, a quarter zeros;
then a real verity superblock and tree from ``updater verity format``) is compressed into the
release's zstd frames and served by Python's http.server (in a thread, on 127.0.0.1, Range
capable, the body sent with sendfile). Then, alternately:

- the pipeline ``curl -s URL | zstd -dc | tee >(sha256sum >/dev/null) | dd of=SLOT bs=4M
  conv=fsync``, which verifies nothing (dd truncates SLOT first, as it is written);
- ``slotwrite.write_image`` in a child process, from an HTTP source (a minimal Range-capable
  requests source, standing in for the TUF client's) into SLOT (preallocated, as a partition
  is), from start to verified: frame and whole-file sha256, the read-back past the page cache
  against the signed root hash.

- ``updater update`` as an operator runs it, from start to activated: a repository made with
  ``updater repo init`` and ``updater repo add`` (the same data with a squashfs superblock in
  front, its verity tree, a kernel carrying the root hash) served by the same server, a
  preallocated GPT disk image booted from USR-A, and the release written into USR-B: TUF
  refresh, the stream, the read-back, the kernel onto the ESP, set-active. The pipeline then
  downloads that repository's own ``usr.img.zst`` so both read the same bytes.

All times count process start-up. The writer's peak RSS is measured per image size with
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in an intermediate process whose only child is the
writer; the writer is one process (its stream and read-back run in threads), so that is its
whole footprint, requests and the HTTP source included.

    .venv/bin/python benchmarks/bench_update.py [--size-mib 1024] [--repeat 3]
        [--rss-sizes 256,1024,2048] [--dir DIR] [--level 3]

Compression uses level 3 (quick to make; zstd decodes all levels at about the same speed).
Nothing is asserted: the numbers and ratios are for people.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


# -- the image -------------------------------------------------------------------------------


def write_data(path: Path, size: int, seed: int) -> None:
    """Per 4 MiB: 2 MiB random (compressed files), 1 MiB of text-like blocks drawn from a pool
    (metadata, scripts), 1 MiB of zeros (sparse tails)."""
    import random

    rng = random.Random(seed)
    words = [bytes(rng.choices(b"etaoinshrdlu", k=rng.randint(2, 9))) for _ in range(4000)]
    pool = [b" ".join(rng.choices(words, k=800))[:4096].ljust(4096, b"\n") for _ in range(256)]
    with path.open("wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(2 * MiB))
            f.write(b"".join(rng.choices(pool, k=256)))
            f.write(bytes(MiB))
        f.write(os.urandom(size % (4 * MiB)))


def updater_cli(*args: str) -> str:
    argv = [sys.executable, "-m", "updater", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO).stdout


def make_usr(image: Path, size_mib: int, *, squashfs: bool) -> tuple[int, str]:
    """``size_mib`` MiB at ``image``: the data (behind a squashfs superblock whose bytes_used is
    the data size, if asked) and its verity tree from ``updater verity format``. Returns the
    data size (the hash offset) and the root hash."""
    data_size = size_mib * MiB - (2 * size_mib + 8) * 4096  # room for the tree in size_mib
    write_data(image, data_size, seed=size_mib)
    if squashfs:
        with image.open("r+b") as f:
            f.write(b"hsqs" + bytes(36) + data_size.to_bytes(8, "little"))
    out = updater_cli(
        "verity", "format", str(image), "--json", "--hash-offset", str(data_size), "--salt", "-"
    )
    return data_size, str(json.loads(out)["root_hash"])


def make_image(directory: Path, size_mib: int, level: int) -> dict[str, Any]:
    """usr.img (data + verity), usr.img.zst (frames) and the signed facts, cached by size."""
    from updater import frames

    facts_path = directory / f"usr-{size_mib}.json"
    if facts_path.exists():
        facts: dict[str, Any] = json.loads(facts_path.read_text())
        return facts
    image = directory / f"usr-{size_mib}.img"
    data_size, root_hash = make_usr(image, size_mib, squashfs=False)

    def chunks() -> Iterator[bytes]:
        with image.open("rb") as f:
            while chunk := f.read(4 * MiB):
                yield chunk

    whole, table = hashlib.sha256(), []
    with (directory / f"usr-{size_mib}.img.zst").open("wb") as out_file:
        for data, _ in frames.compress_frames(chunks(), level=level):
            out_file.write(data)
            whole.update(data)
            table.append([len(data), hashlib.sha256(data).hexdigest()])
    facts = {
        "size": image.stat().st_size,
        "length": sum(n for n, _ in table),
        "sha256": whole.hexdigest(),
        "frame_size": frames.DEFAULT_FRAME_SIZE,
        "frames": table,
        "root_hash": root_hash,
        "hash_offset": data_size,
    }
    image.unlink()  # only the compressed file is served
    facts_path.write_text(json.dumps(facts))
    return facts


# -- a release as operators publish it, and a machine that takes it -------------------------


def make_repository(directory: Path, sizes: list[int]) -> tuple[Path, dict[int, str]]:
    """``updater repo init`` and one ``repo add`` per size (versions 2, 3, ...): the benchmark's
    data behind a squashfs superblock (bytes_used: the data size), its verity tree, a kernel
    carrying the root hash. Returns the repository and each size's version."""
    from updater.cmdline import USRHASH_OFFSETS

    image, kernel, repo = directory / "release.img", directory / "vmlinuz", directory / "repo"
    updater_cli("repo", "init", str(repo))
    versions = {}
    for number, size_mib in enumerate(sizes, start=2):
        _, root_hash = make_usr(image, size_mib, squashfs=True)
        head = bytearray(b"MZ" + bytes(8190))
        at = USRHASH_OFFSETS["x86_64"]
        head[at : at + 64] = root_hash.encode()
        kernel.write_bytes(head)
        versions[size_mib] = str(number)
        updater_cli(
            "repo", "add", str(repo), "--version", str(number), "--usr", str(image),
            "--kernel", str(kernel), "--arch", "x86_64",
        )  # fmt: skip
        image.unlink()
    return repo, versions


def run_update(
    directory: Path, repo: Path, url: str, size_mib: int, version: str
) -> dict[str, Any]:
    """A fresh machine (a preallocated GPT disk image booted from USR-A at version 1, an empty
    ESP directory, an empty state directory), then ``updater update`` to activated."""
    from updater import inventory, layout
    from updater.release import parse_version

    disk, esp, state = directory / "disk.img", directory / "esp", directory / "update-state"
    disk.unlink(missing_ok=True)
    shutil.rmtree(esp, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    small = dict(esp_size=4 * MiB, oem_size=4 * MiB, root_size=4 * MiB)
    layout.create_disk(layout.flatcar_layout(usr_size=size_mib * MiB, **small), str(disk))
    preallocate(disk, disk.stat().st_size)
    (esp / "flatcar").mkdir(parents=True)
    inventory.record(str(state), str(layout.USR_A_UUID), parse_version("1"))
    config = directory / "updater.toml"
    config.write_text("")
    run = measured([
        sys.executable, "-m", "updater", "--config", str(config), "--disk", str(disk),
        "--booted", "A", "--esp", str(esp), "update", "--repo", url,
        "--trusted-root", str(repo / "metadata" / "1.root.json"), "--state-dir", str(state),
        "--version", version, "--reboot", "none", "--json",
    ])  # fmt: skip
    result = json.loads(run.pop("stdout").splitlines()[-1])
    if result.get("event") != "result" or result.get("status") != "updated":
        raise SystemExit(f"updater update did not activate the release: {result}")
    return run


# -- the server ------------------------------------------------------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    directory = "."
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        path = Path(self.directory, self.path.lstrip("/"))
        if not path.is_file():  # the TUF client asks for the next root version: 404 ends that
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(size - start))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with path.open("rb") as f:
            self.connection.sendfile(f, start, size - start)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- base signature
        return


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (RangeHandler,), {"directory": str(directory)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# -- the writer, in a child process ----------------------------------------------------------


@dataclass
class HttpSource:
    """Minimal Range-capable source; the TUF client's fetcher replaces it in ``updater update``."""

    url: str

    def open(self, start: int) -> Iterator[bytes]:
        import requests

        headers = {"Range": f"bytes={start}-"} if start else {}
        with requests.get(self.url, headers=headers, stream=True, timeout=30) as response:
            response.raise_for_status()
            if start and response.status_code != 206:
                raise RuntimeError(f"{self.url} ignored the Range request")
            yield from response.iter_content(chunk_size=MiB)


def child(url: str, facts_path: str, slot: str, state: str) -> None:
    from updater.frames import Frame, FrameTable
    from updater.slotwrite import ImageFacts, Region, write_image

    start = time.perf_counter()
    facts = json.loads(Path(facts_path).read_text())
    table = FrameTable(
        facts["frame_size"], facts["size"], tuple(Frame(*f) for f in facts["frames"])
    )
    image = ImageFacts(
        facts["length"], facts["sha256"], table, bytes.fromhex(facts["root_hash"]),
        facts["hash_offset"],
    )  # fmt: skip
    result = write_image(HttpSource(url), image, Region(slot), booted=None, state_dir=state)
    assert result.whole_file_checked and result.first_frame == 0
    print(json.dumps({"seconds": time.perf_counter() - start, "direct_io": result.direct_io}))


def measure(argv: list[str]) -> None:
    """The intermediate process: its only child is the writer, so RUSAGE_CHILDREN is its."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if proc.returncode:
        raise SystemExit(proc.returncode)
    out = proc.stdout
    seconds = time.perf_counter() - start
    maxrss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall": seconds, "maxrss_kib": maxrss_kib, "stdout": out}))


def measured(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` under ``measure``: its wall time, peak RSS and stdout."""
    script = str(Path(__file__).resolve())
    proc = subprocess.run(
        [sys.executable, script, "--measure", *argv], capture_output=True, cwd=REPO
    )
    if proc.returncode:
        raise SystemExit(f"{argv[2:4]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_writer(url: str, facts: Path, slot: Path, state: Path) -> dict[str, float]:
    shutil.rmtree(state, ignore_errors=True)  # no journal: every run writes from frame 0
    script = str(Path(__file__).resolve())
    run = measured([sys.executable, script, "--child", url, str(facts), str(slot), str(state)])
    result: dict[str, float] = {**json.loads(run.pop("stdout")), **run}
    return result


def run_pipeline(url: str, slot: Path) -> float:
    command = (
        f"curl -s {url} | zstd -dc | tee >(sha256sum >/dev/null) | dd of={slot} bs=4M conv=fsync"
    )
    start = time.perf_counter()
    subprocess.run(["bash", "-c", command], check=True, capture_output=True)
    return time.perf_counter() - start


def preallocate(slot: Path, size: int) -> None:
    """A slot is a partition: its blocks exist before the write. dd truncated it; give them back."""
    with slot.open("ab") as f:
        os.posix_fallocate(f.fileno(), 0, size)


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:6])
        return 0
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="image for the ratio")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best counts")
    parser.add_argument("--rss-sizes", default="256,1024,2048", help="MiB, comma-separated")
    parser.add_argument("--dir", default=None, help="where to put the files (default: temp)")
    parser.add_argument("--level", type=int, default=3, help="zstd level of the frames")
    args = parser.parse_args()
    for tool in ("curl", "zstd", "dd", "sha256sum", "tee"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-update-") as tmp:
        directory = Path(tmp)
        sizes = sorted({args.size_mib, *rss_sizes})
        started = time.perf_counter()
        facts = {size: make_image(directory, size, args.level) for size in sizes}
        made = ", ".join(f"{s} MiB" for s in sizes)
        print(f"test data: {made} in {time.perf_counter() - started:.1f} s")
        server, base = serve(directory)
        slot, state = directory / "slot.img", directory / "state"
        try:
            main_facts = facts[args.size_mib]
            url = f"{base}/usr-{args.size_mib}.img.zst"
            pipeline_times, writer_runs = [], []
            for _ in range(args.repeat):
                pipeline_times.append(run_pipeline(url, slot))
                preallocate(slot, main_facts["size"])
                writer_runs.append(
                    run_writer(url, directory / f"usr-{args.size_mib}.json", slot, state)
                )
            memory = {}
            for size in rss_sizes:
                slot.unlink(missing_ok=True)
                preallocate(slot, facts[size]["size"])
                memory[size] = run_writer(
                    f"{base}/usr-{size}.img.zst", directory / f"usr-{size}.json", slot, state
                )
            slot.unlink()
            started = time.perf_counter()
            repo, versions = make_repository(directory, sizes)
            print(f"repository: {len(sizes)} releases published in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            version = versions[args.size_mib]
            target = next(repo.glob(f"targets/**/{version}/*usr.img.zst")).relative_to(directory)
            e2e_pipeline, update_runs = [], []
            for _ in range(args.repeat):
                e2e_pipeline.append(run_pipeline(f"{base}/{target}", slot))
                slot.unlink()
                update_runs.append(
                    run_update(directory, repo, f"{base}/repo", args.size_mib, version)
                )
            update_memory = {
                size: run_update(directory, repo, f"{base}/repo", size, versions[size])
                for size in rss_sizes
            }
        finally:
            server.shutdown()
    pipeline = min(pipeline_times)
    best = min(writer_runs, key=lambda r: r["wall"])
    compressed = main_facts["length"] / MiB
    print(
        f"image: {args.size_mib} MiB, {compressed:.0f} MiB compressed, "
        f"{os.cpu_count()} CPUs, best of {args.repeat}"
    )
    print(f"pipeline curl|zstd|tee sha256sum|dd:  {pipeline:6.2f} s")
    print(
        f"slotwrite (to verified, read-back):   {best['wall']:6.2f} s  "
        f"(ratio slotwrite/pipeline {best['wall'] / pipeline:.2f}; "
        f"in-process {best['seconds']:.2f} s, O_DIRECT {best['direct_io']})"
    )
    best_update = min(update_runs, key=lambda r: r["wall"])
    e2e = min(e2e_pipeline)
    print(f"pipeline on the repository's target:  {e2e:6.2f} s")
    print(
        f"updater update (start to activated):  {best_update['wall']:6.2f} s  "
        f"(ratio update/pipeline {best_update['wall'] / e2e:.2f}; "
        f"peak RSS {best_update['maxrss_kib'] / 1024:.1f} MiB)"
    )
    for size, run in memory.items():
        print(
            f"peak RSS of the writer, {size:5d} MiB image: {run['maxrss_kib'] / 1024:5.1f} MiB "
            f"({run['wall']:.2f} s); of updater update "
            f"{update_memory[size]['maxrss_kib'] / 1024:5.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

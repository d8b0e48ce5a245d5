"""The file backend on a real directory: every step durable, a cut after any step of a boot's
plan or of the staging sequence leaves a directory whose next boot mounts the very file the pure
table (``fileslots``) predicted; hostile files are refused with one line; ``updater update``
writes, verifies and stages a signed release into ``root-new.img``."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from tests.integration.conftest import ROOT as ROOT_DIR
from tests.integration.repos import Site
from updater import filebackend as fb
from updater import fileslots as fs
from updater import fileupdate
from updater.config import UpdateSettings
from updater.errors import DataError, SlotError
from updater.fileslots import BROKEN, NEW, OLD, PART, ROOT, FileState
from updater.release import parse_version
from updater.update import Event, Request

pytestmark = pytest.mark.integration


def tag_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def put_image(directory: Path, name: str, tag: str | None = None) -> None:
    """A small image file whose trailer names ``tag`` (the file's identity through renames)."""
    trailer = fb.Trailer(tag_hash(tag or name), 4096, 8192, "1")
    (directory / name).write_bytes(b"\x5a" * 8192 + trailer.encode())


def make_state(directory: Path, state: FileState) -> None:
    for name in state.images:
        put_image(directory, name)
    if state.revert:
        fb.apply_step(str(directory), fs.Step("mark-revert"))
    if state.tries is not None:
        fb.apply_step(str(directory), fs.Step("set-tries", value=state.tries))


def root_tag(directory: Path) -> str | None:
    image = fb.read(str(directory)).images.get(ROOT)
    assert image is not None and image.trailer is not None
    return image.trailer.root_hash


def state_id(s: FileState) -> str:
    """A test id that is the same in every process: a frozenset's order follows the string hash,
    which differs between interpreters (pytest-xdist's workers must collect the same ids)."""
    return f"{'+'.join(sorted(s.images))}-revert={s.revert}-tries={s.tries}"


ALL = [
    FileState(frozenset(imgs), rv, t)
    for n in range(1, 5)
    for imgs in itertools.combinations([ROOT, NEW, OLD, BROKEN], n)
    for rv in (False, True)
    for t in (None, 0, 2)
    if set(imgs) & {ROOT, NEW, OLD}
]


@pytest.mark.parametrize("start", ALL, ids=state_id)
def test_a_cut_after_any_boot_step_boots_the_predicted_file(start: FileState,
                                                             tmp_path: Path) -> None:  # fmt: skip
    expected = fs.boots_next(start)
    assert expected is not None
    steps = fs.plan(start)
    for cut in range(len(steps) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        make_state(d, start)
        assert fb.read(str(d)).state == start
        fb.apply_steps(str(d), steps[:cut])
        # what the disk holds is exactly what the table says it holds after those steps
        mid = start
        for step in steps[:cut]:
            mid = fs.apply(mid, step)
        assert fb.read(str(d)).state == mid
        # the next boot (the rest of this one, resumed) mounts the predicted file
        fb.apply_steps(str(d), fs.plan(fb.read(str(d)).state))
        assert root_tag(d) == tag_hash(expected)
        assert not (d / fs.MARKER).exists()


STAGE_FROM = [FileState(frozenset({ROOT})), FileState(frozenset({ROOT, OLD, BROKEN})),
              FileState(frozenset({ROOT, NEW}), tries=3)]  # fmt: skip


@pytest.mark.parametrize("start", STAGE_FROM, ids=state_id)
def test_a_cut_during_staging_boots_root_or_the_staged_image(start: FileState,
                                                            tmp_path: Path) -> None:  # fmt: skip
    steps = fs.stage(start, 3)
    for cut in range(len(steps) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        make_state(d, start)
        put_image(d, PART)
        fb.apply_steps(str(d), steps[:cut])
        fb.apply_steps(str(d), fs.plan(fb.read(str(d)).state))
        tag = root_tag(d)
        if cut == len(steps):
            assert tag == tag_hash(PART)
            kept = {ROOT, OLD} | (start.images & {BROKEN})
            assert fb.read(str(d)).state == FileState(frozenset(kept), tries=2)
        else:
            assert tag in (tag_hash(ROOT), tag_hash(NEW) if NEW in start.images else None)


def test_hostile_directory_entries(tmp_path: Path) -> None:
    put_image(tmp_path, OLD)
    os.symlink(tmp_path / OLD, tmp_path / ROOT)
    with pytest.raises(DataError, match="not a regular file"):
        fb.read(str(tmp_path))
    (tmp_path / ROOT).unlink()
    (tmp_path / ROOT).write_bytes(b"\0" * 8192)  # no trailer
    (tmp_path / fs.TRIES).write_bytes(b"files_tries=1\n")  # not a GRUB block
    d = fb.read(str(tmp_path))
    assert d.images[ROOT].trailer is None and "no image trailer" in (d.images[ROOT].problem or "")
    assert d.state.tries == 0 and "not a 1024-byte counter block" in (d.tries_problem or "")
    (tmp_path / fs.TRIES).write_bytes(fb.tries_block(7))
    assert fb.read(str(tmp_path)).state.tries == 7
    with pytest.raises(Exception, match="does not exist"):
        fb.read(str(tmp_path / "missing"))


def test_boot_files_are_kept_by_hash_and_pruned(tmp_path: Path) -> None:
    put_image(tmp_path, ROOT)
    fb.write_boot_files(str(tmp_path), tag_hash(ROOT), b"k1", b"i1")
    fb.write_boot_files(str(tmp_path), tag_hash("gone"), b"k2", None)
    assert fb.prune_boot_files(fb.read(str(tmp_path))) == [tag_hash("gone")]
    kernel, initrd = fb.boot_files(str(tmp_path), tag_hash(ROOT))
    assert Path(kernel).read_bytes() == b"k1" and Path(initrd).read_bytes() == b"i1"


# ------------------------------------------------------------------ update into root-new.img


def test_update_writes_verifies_and_stages_root_new(site: Site) -> None:
    images = site.tmp / "images"
    images.mkdir()
    put_image(images, ROOT)  # "version 1" is booted (its trailer says so)
    put_image(images, OLD)
    request = Request(settings=UpdateSettings(repo=site.proxy.url, state_dir=str(site.state)),
                      arch="x86_64")  # fmt: skip
    seen: list[Event] = []
    outcome = fileupdate.run(str(images), 3, request, site.client(), seen.append)
    assert outcome.status == "updated" and str(outcome.release.version) == "2"  # type: ignore[union-attr]
    d = fb.read(str(images))
    assert d.state == FileState(frozenset({ROOT, NEW}), tries=3)  # old dropped, counter set
    new = d.images[NEW]
    assert new.trailer is not None and new.trailer.version == "2"
    # the file holds exactly the published image, then the trailer
    published = site.stored("stable/x86_64/2/usr.img.zst")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(published.read_bytes()),
                                                         read_across_frames=True)  # fmt: skip
    image = reader.read()
    assert len(image) == new.trailer.size
    assert (images / NEW).read_bytes() == image + new.trailer.encode()
    kernel, initrd = fb.boot_files(str(images), new.trailer.root_hash)
    assert Path(kernel).exists() and Path(initrd).read_bytes() == b"initrd"
    assert not (images / PART).exists()
    assert [e.kind for e in seen if e.kind in ("activated", "nothing")] == ["activated"]
    # a rerun: already staged
    again = fileupdate.run(str(images), 3, request, site.client(), seen.append)
    assert again.status == "nothing" and "already staged" in again.reason
    # the booted root is on trial after the boot: a further update is refused until mark-good
    fb.apply_steps(str(images), fs.plan(fb.read(str(images)).state))
    with pytest.raises(SlotError, match="mark it good first"):
        fileupdate.run(str(images), 3, Request(settings=request.settings, arch="x86_64",
                                               pin=parse_version("1"), allow_downgrade=True),
                       site.client(), seen.append)  # fmt: skip


# ------------------------------------------------------------------- the commands, as an operator


def test_commands_on_the_file_backend(site: Site) -> None:
    images = site.tmp / "images"
    images.mkdir()
    put_image(images, ROOT)
    cfg = site.tmp / "files.toml"
    cfg.write_text(f'[boot]\nbackend = "files"\nimages_dir = "{images}"\ntries = 2\n'
                   f'[update]\ntimeout = 1\nretries = 1\nstate_dir = "{site.state}"\n')  # fmt: skip
    exe = ROOT_DIR / ".venv" / "bin" / "updater"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "updater"]

    def updater(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, "--config", str(cfg), *args], capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    status = json.loads(updater("status", "--json").stdout)
    assert status["backend"] == "files" and status["next"] == ROOT and status["tries"] is None
    assert {"disk", "gpt", "slots", "next", "agent"} <= set(status)
    # this host did not boot through the directory (no updater.images= on its command line)
    assert status["slots"][0]["image"] == ROOT and status["slots"][0]["booted"] is False
    # rollback with nothing to go back to: one line, exit 1, nothing changed
    proc = updater("rollback")
    assert proc.returncode == 1 and "no root-old.img to go back to" in proc.stderr
    assert sorted(p.name for p in images.iterdir()) == [ROOT]

    proc = updater("update", "--repo", site.proxy.url, "--trusted-root",
                   str(site.trusted_root), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["status"] == "updated" and events[-1]["version"] == "2"
    status = json.loads(updater("status", "--json").stdout)
    assert status["next"] == NEW and status["tries"] == 2
    assert status["plan"] == ["rename root.img root-old.img", "rename root-new.img root.img",
                              "set-tries 1"]  # fmt: skip
    # mark-good before the new image booted is refused
    proc = updater("mark-good")
    assert proc.returncode == 1 and "not booted yet" in proc.stderr
    plan = json.loads(updater("kexec", "--dry-run", "--json").stdout)
    assert plan["image"] == NEW and plan["version"] == "2" and plan["backend"] == "files"
    assert f"updater.images={images}" in plan["cmdline"].split()
    assert Path(plan["kernel"]).read_bytes()[0x40:0x80].decode() == plan["root_hash"]
    # the initrd's boot, then the commands on the booted image
    fb.apply_steps(str(images), fs.plan(fb.read(str(images)).state))
    good = json.loads(updater("mark-good", "--json").stdout)
    assert good["steps"] == ["remove tries"] and good["tries"] is None
    back = json.loads(updater("rollback", "--json").stdout)
    assert back["steps"] == ["mark-revert"] and back["next"] == OLD and back["revert"] is True
    proc = updater("rollback", "--dry-run")
    assert proc.returncode == 0 and "nothing to change" in proc.stdout

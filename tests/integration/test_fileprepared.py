"""Prepared kexec reboots on the file backend, through the command line with the kexec and
systemctl tools replaced by loggers: ``kexec --prepare`` loads the kernel of the image the next
boot promotes and changes nothing in the directory; at shutdown ``--consume-prepared`` keeps it
while the directory still boots that image and unloads it otherwise; ``updater kexec`` drops the
record and does not run the pre-reboot hooks a second time; ``update --prepare-kexec`` loads the
new image's kernel right after staging it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.repos import Site
from tests.integration.test_filebackend import put_image, tag_hash
from tests.integration.test_hooks_runner import hook
from tests.integration.test_kexec_commands import OK, fakes, logged, run_cli, use
from updater import filebackend, fileprepared, fileslots, prepared
from updater.fileslots import NEW, OLD, ROOT
from updater.hooks.rules import Stage

pytestmark = pytest.mark.integration

__all__ = ["fakes"]  # a fixture of the kexec commands' tests, used here


@pytest.fixture
def run_dir(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = fast_tmp / "run"
    run.mkdir()
    record = str(run / "kexec-prepared.json")
    monkeypatch.setattr(fileprepared, "RECORD", record)
    monkeypatch.setattr(prepared, "RECORD", record)  # the same file, as on a machine
    monkeypatch.setattr(fileprepared, "KEXEC_LOADED", str(run / "kexec_loaded"))
    return run


@pytest.fixture
def machine(fast_tmp: Path) -> tuple[Path, Path]:
    """(config file, images dir): root.img (version 1) booted, root-new.img (2) staged with two
    tries, a kernel and initrd for each by root hash; hooks in their own directory."""
    images = fast_tmp / "images"
    images.mkdir()
    for name, version in ((ROOT, "1"), (NEW, "2")):
        trailer = filebackend.Trailer(tag_hash(name), 4096, 8192, version)
        (images / name).write_bytes(b"\x5a" * 8192 + trailer.encode())
        filebackend.write_boot_files(str(images), tag_hash(name), f"kernel {name}".encode(),
                                     b"initrd")  # fmt: skip
    filebackend.apply_step(str(images), fileslots.Step("set-tries", value=2))
    conf = fast_tmp / "files.toml"
    conf.write_text(f'[boot]\nbackend = "files"\nimages_dir = "{images}"\ntries = 2\n'
                    f'[update]\nstate_dir = "{fast_tmp / "state"}"\n'
                    f'[hooks]\ndir = "{fast_tmp / "hooks"}"\n')  # fmt: skip
    return conf, images


@dataclass
class Env:
    """A machine on the file backend (``machine``), the logged tools and the run directory."""

    conf: Path
    images: Path
    log: Path  # what the faked kexec and systemctl were asked
    run: Path
    capsys: pytest.CaptureFixture[str]

    def cli(self, *args: str) -> tuple[int, Any, str]:
        code, out, err = run_cli(["--config", str(self.conf), *args], self.capsys)
        return code, json.loads(out) if out.startswith("{") else out, err

    def loaded(self, flag: str) -> None:
        (self.run / "kexec_loaded").write_text(flag)


@pytest.fixture
def env(machine: tuple[Path, Path], fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Env:  # fmt: skip
    use(monkeypatch, OK)
    return Env(*machine, fakes, run_dir, capsys)


def test_prepare_loads_the_staged_image_and_the_shutdown_keeps_it(env: Env) -> None:
    before = sorted(p.name for p in env.images.iterdir()), filebackend.read(str(env.images)).state
    code, doc, err = env.cli("kexec", "--prepare", "--json")
    assert code == 0, err
    kernel, initrd = filebackend.boot_files(str(env.images), tag_hash(NEW))
    assert (doc["prepared"], doc["backend"], doc["image"], doc["version"]) == (True, "files",
                                                                               NEW, "2")
    assert (doc["kernel"], doc["initrd"], doc["method"]) == (kernel, initrd, "kexec_file_load")
    assert doc["pre_reboot_hooks"] == []  # none in the hooks directory: none ran
    assert logged(env.log) == [["kexec", "-u"], ["kexec", "-s", "-l", kernel, f"--initrd={initrd}",
                                               f"--append={doc['cmdline']}"]]  # fmt: skip
    # nothing in the directory moved: the next boot's initrd counts the try
    assert (sorted(p.name for p in env.images.iterdir()),
            filebackend.read(str(env.images)).state) == before  # fmt: skip

    env.loaded("1\n")
    code, doc, _ = env.cli("kexec", "--consume-prepared", "--json")
    assert code == 0
    assert doc == {"action": "kept", "reason": None, "backend": "files", "image": NEW,
                   "version": "2"}  # fmt: skip
    assert len(logged(env.log)) == 2, "no unload: the reboot enters the prepared kernel"
    assert not (env.run / "kexec-prepared.json").exists()
    assert env.cli("kexec", "--consume-prepared", "--json")[1]["action"] == "none"


def test_a_rollback_after_prepare_unloads_the_kernel_at_shutdown(env: Env) -> None:
    assert env.cli("kexec", "--prepare")[0] == 0
    assert env.cli("rollback")[0] == 0  # root-new.img dropped: root.img boots next
    env.loaded("1\n")
    code, doc, _ = env.cli("kexec", "--consume-prepared", "--json")
    assert code == 0 and doc["action"] == "unloaded" and doc["image"] == NEW
    assert doc["reason"] == (f"the directory boots {ROOT} (version 1) now, not the prepared "
                             f"{NEW} (version 2)")  # fmt: skip
    assert logged(env.log)[-1] == ["kexec", "-u"]
    assert not (env.run / "kexec-prepared.json").exists()


@pytest.mark.parametrize("record", [b"{", b'{"format": 1, "disk": "/dev/vda"}'])
def test_a_record_it_cannot_read_unloads(env: Env, record: bytes) -> None:
    """A damaged record, or the GPT backend's record (a backend switched in between)."""
    (env.run / "kexec-prepared.json").write_bytes(record)
    env.loaded("1\n")
    code, doc, _ = env.cli("kexec", "--consume-prepared", "--json")
    assert code == 0 and doc["action"] == "unloaded"
    assert "not a prepared-kexec record of the file backend" in doc["reason"]
    assert logged(env.log) == [["kexec", "-u"]]


def test_nothing_loaded_any_more_unloads_nothing(env: Env) -> None:
    assert env.cli("kexec", "--prepare")[0] == 0
    env.loaded("0\n")  # kexec -u by hand since
    code, doc, _ = env.cli("kexec", "--consume-prepared", "--json")
    assert code == 0 and doc["action"] == "not-loaded"
    assert logged(env.log)[2:] == []


def test_kexec_after_prepare_runs_the_hooks_once_and_drops_the_record(
    env: Env, fast_tmp: Path
) -> None:
    ran = fast_tmp / "ran"
    hook(fast_tmp / "hooks", Stage.PRE_REBOOT, "10-drain", f"echo drained >> {ran}")
    code, doc, err = env.cli("kexec", "--prepare", "--json")
    assert code == 0, err
    assert doc["pre_reboot_hooks"] == ["10-drain"] and ran.read_text() == "drained\n"
    code, doc, err = env.cli("kexec", "--json")
    assert code == 0, err
    assert doc["image"] == NEW and doc["pre_reboot_hooks"] == []
    assert "ran when the boot of root-new.img was prepared: not again" in err
    assert ran.read_text() == "drained\n", "the hook ran once"
    assert not (env.run / "kexec-prepared.json").exists()
    assert logged(env.log)[-1] == ["systemctl", "kexec"]


def test_a_failing_hook_at_prepare_loads_nothing_and_drops_the_staged_image(
    env: Env, fast_tmp: Path
) -> None:
    hook(fast_tmp / "hooks", Stage.PRE_REBOOT, "10-refuse", "exit 3")
    code, _, err = env.cli("kexec", "--prepare")
    assert code == 1 and "pre-reboot hook 10-refuse exited 3" in err
    assert logged(env.log) == [] and not (env.run / "kexec-prepared.json").exists()
    assert sorted(p.name for p in env.images.iterdir() if p.is_file()) == [ROOT]


def test_prepare_refuses_a_slot_and_a_directory_that_boots_nothing(env: Env) -> None:
    code, _, err = env.cli("kexec", "--prepare", "--slot", "B")
    assert code == 2 and "--slot does not apply to the file backend" in err
    for name in (ROOT, NEW):
        (env.images / name).unlink()
    code, _, err = env.cli("kexec", "--prepare")
    assert code == 1 and err.count("\n") == 1 and "no image would boot" in err
    assert logged(env.log) == [] and not (env.run / "kexec-prepared.json").exists()


def test_the_old_image_is_prepared_after_a_revert(env: Env) -> None:
    """The plan, not the name: with the new image booted and a revert marked, the kernel of
    root-old.img is the one loaded."""
    images = str(env.images)
    filebackend.apply_steps(images, fileslots.plan(filebackend.read(images).state))
    assert env.cli("rollback")[0] == 0
    code, doc, err = env.cli("kexec", "--prepare", "--json")
    assert code == 0, err
    # the previous root.img, renamed: its version and root hash go with it
    assert (doc["image"], doc["version"], doc["root_hash"]) == (OLD, "1", tag_hash(ROOT))


def test_update_prepare_kexec_loads_the_staged_image(
    site: Site, fakes: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    use(monkeypatch, OK)
    images = site.tmp / "images"
    images.mkdir()
    put_image(images, ROOT)
    conf = site.tmp / "files.toml"
    conf.write_text(f'[boot]\nbackend = "files"\nimages_dir = "{images}"\ntries = 2\n'
                    f'[update]\nrepo = "{site.proxy.url}"\ntrusted_root = "{site.trusted_root}"\n'
                    f'state_dir = "{site.state}"\ntimeout = 1\nretries = 1\n')  # fmt: skip
    code, out, err = run_cli(["--config", str(conf), "update", "--prepare-kexec", "--json"],
                             capsys)  # fmt: skip
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    prepared_events = [e for e in events if e["event"] == "prepared"]
    assert prepared_events == [{"event": "prepared", "slot": "files", "image": NEW,
                                "method": "kexec_file_load"}]  # fmt: skip
    record = fileprepared.read_record()
    assert record is not None and record.plan.image == NEW and record.plan.version == "2"
    loads = [c for c in logged(fakes) if c[:3] == ["kexec", "-s", "-l"]]
    assert len(loads) == 1 and loads[0][3] == record.plan.kernel

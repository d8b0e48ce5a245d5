"""What a command imports at start-up, in a fresh interpreter: only its own command module, so
that ``updater verity format`` or ``updater --help`` do not pay for the boot path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import test_kexec_commands as kc

pytestmark = pytest.mark.integration

boot_disk = kc.boot_disk  # a disk with a FAT ESP (kernels, first-boot marker) and an ext4 OEM

PROBE = """
import json, sys
from updater import cli
argv = sys.argv[1:]
cli.build_parser(cli.command_of(argv))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("updater"))))
"""


def imported(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return set(json.loads(out))


@pytest.mark.parametrize(
    ("argv", "module", "absent"),
    [
        (["verity", "format", "x", "--hash-file", "y"], "updater.commands.verity",
         {"updater.bootflow", "updater.state", "updater.gpt", "updater.config"}),
        (["--disk", "d.img", "--booted", "A", "kexec", "--dry-run"], "updater.commands.boot",
         {"updater.verityfile", "updater.commands.verity", "updater.commands.slots"}),
        (["--help"], None, {"updater.bootflow", "updater.state", "updater.verityfile"}),
        (["config", "show"], "updater.commands.config",
         {"updater.bootflow", "updater.state", "updater.verityfile"}),
    ],
)  # fmt: skip
def test_a_command_imports_only_its_module(
    argv: list[str], module: str | None, absent: set[str]
) -> None:
    found = imported(*argv)
    assert module is None or module in found
    assert not found & absent, found & absent


FORMAT_PROBE = """
import json, sys
from updater import cli
status = cli.main(sys.argv[1:])
print(json.dumps([status, sorted(sys.modules)]), file=sys.stderr)
"""

# What `updater verity format` must not import: each costs start-up time that the comparison
# with veritysetup pays at every size (benchmarks/bench_verity.py). dataclasses brings inspect,
# ast, dis and tokenize; shutil brings bz2 and lzma; and no command module but its own.
FORMAT_ABSENT = {"dataclasses", "inspect", "typing", "shutil", "threading", "subprocess", "uuid",
                 "updater.commands.slots", "updater.commands.boot", "updater.run"}  # fmt: skip


def test_verity_format_runs_without_heavy_imports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(bytes(64 * 4096))
    argv = ["verity", "format", str(data), "--hash-file", str(tmp_path / "hash"), "--json"]
    result = subprocess.run([sys.executable, "-c", FORMAT_PROBE, *argv], capture_output=True,
                            text=True, check=True)  # fmt: skip
    status, modules = json.loads(result.stderr.splitlines()[-1])
    assert status == 0
    assert json.loads(result.stdout)["data_blocks"] == 64
    assert not FORMAT_ABSENT & set(modules), FORMAT_ABSENT & set(modules)


# ------------------------------------------------------------------ what a command must not load
# Each command below runs for real in a fresh interpreter, and the modules it loaded are checked
# against what its purpose excludes (issue 12: start-up time under emulation is mostly imports).
# The sets are named from what the command does, not from what happens to be imported today.

RUN_PROBE = """
import json, sys
spawned = []
sys.addaudithook(lambda event, args: spawned.append(event) if event in (
    "subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork", "os.system") else None)
from updater import cli
try:
    status = cli.main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print(json.dumps([status, sorted(sys.modules), spawned]), file=sys.stderr)
"""

# No command here fetches, publishes, installs, writes a slot or runs the agent.
NOT_HERE = {"tuf", "requests", "urllib3", "zstandard", "securesystemslib", "cryptography",
            "updater.fetch", "updater.repo", "updater.install", "updater.slotwrite",
            "updater.update", "updater.verityfile", "updater.agent.runner",
            "updater.agent.machine", "updater.agent.system"}  # fmt: skip
# The reboot flow and what only it uses.
REBOOT_FLOW = {"updater.bootflow", "updater.bootplan", "updater.prepared", "updater.kexec",
               "updater.quiesce", "updater.signals", "updater.initrdcpio", "updater.espfiles"}
# Running hooks: the runner, the ledger, the slot inventory (and the release model it reads).
HOOKS = {"updater.hooks", "updater.inventory"}
FILE_BACKEND = {"updater.filebackend", "updater.fileboot", "updater.fileslots",
                "updater.fileprepared", "updater.commands.files"}  # fmt: skip
# Writing: atomic files, disk creation, external tools.
WRITING = {"updater.atomicfile", "updater.layout", "updater.slotimage", "updater.run",
           "subprocess", "tempfile"}  # fmt: skip
# Types are for the type checker: a command that imports ``typing`` at run time pays for it.
# (Reading a configuration file imports it anyway: tomllib does.)
TYPES = {"typing"}
# The standard dataclasses compile every generated method and import inspect (with ast, dis and
# tokenize); the project's records (updater.records) need neither, on any command.
GENERATED_CODE = {"dataclasses", "inspect"}
# The standard uuid module imports platform (which compiles a dozen regular expressions) and the
# _uuid extension: about 25 ms in the emulated test machine. GPT GUIDs and PARTUUIDs are
# updater.guid's, so no command that reads a partition table needs it.
UUID_MODULE = {"uuid", "platform", "_uuid"}
# pathlib imports urllib.parse (and with it ipaddress) and fnmatch: 30-40 ms there. The reading
# path goes through os.path and open() instead.
PATHLIB = {"pathlib", "urllib", "ipaddress"}
# The shell wrapper's `python3 -m updater` ran the module runner, which imports these; the
# image's /usr/bin/updater calls the entry point directly (and so does this probe).
MODULE_RUNNER = {"runpy", "importlib.util"}
QUICK = UUID_MODULE | PATHLIB | MODULE_RUNNER  # what the quick commands must not load
SLOT_ENGINE = {"updater.slots", "updater.state", "updater.gpt", "updater.gptformat",
               "updater.target", "updater.config", "dataclasses", "subprocess"}  # fmt: skip


def run_probe(*argv: str) -> tuple[object, set[str], list[str]]:
    result = subprocess.run([sys.executable, "-c", RUN_PROBE, *argv], capture_output=True,
                            text=True, env={**os.environ, "LANG": "C.UTF-8"})  # fmt: skip
    status, modules, spawned = json.loads(result.stderr.splitlines()[-1])
    return status, set(modules), spawned


def loaded(modules: set[str], forbidden: set[str]) -> set[str]:
    """The members of ``modules`` that are in ``forbidden`` or inside a forbidden package."""
    return {m for m in modules if m in forbidden or any(m.startswith(f + ".") for f in forbidden)}


@pytest.fixture
def machine(boot_disk: Path, fast_tmp: Path) -> list[str]:
    """The global options of a machine booted from USR-A (marked good), with a state directory
    of its own: the agent never ran, no pin."""
    conf = fast_tmp / "updater.toml"
    conf.write_text(f'[update]\nstate_dir = "{fast_tmp / "state"}"\n')
    return ["--config", str(conf), "--disk", str(boot_disk), "--booted", "A"]


def test_help_loads_no_command_and_no_slot_engine() -> None:
    status, modules, spawned = run_probe("--help")
    assert status == 0 and spawned == []
    commands = {m for m in modules if m.startswith("updater.commands.")}
    assert commands == set(), commands
    forbidden = SLOT_ENGINE | REBOOT_FLOW | NOT_HERE | TYPES | GENERATED_CODE | QUICK
    assert not loaded(modules, forbidden), loaded(modules, forbidden)


@pytest.mark.parametrize("json_out", [False, True])
def test_status_loads_only_the_reading_of_the_disk(machine: list[str], json_out: bool) -> None:
    status, modules, spawned = run_probe(*machine, "status", *(["--json"] if json_out else []))
    assert status == 0 and spawned == []
    assert "updater.state" in modules and "updater.commands.slots" in modules
    # nor the release model (no pin to parse) nor the agent's record (it never ran)
    forbidden = (REBOOT_FLOW | HOOKS | FILE_BACKEND | WRITING | NOT_HERE
                 | {"updater.commands.boot", "updater.release", "updater.verity",
                    "updater.agent.record", "updater.agent.schedule"} | GENERATED_CODE
                 | QUICK)  # fmt: skip
    assert not loaded(modules, forbidden), loaded(modules, forbidden)


def test_kexec_dry_run_into_a_good_slot_loads_no_hook_machinery(machine: list[str]) -> None:
    status, modules, spawned = run_probe(*machine, "kexec", "--dry-run")
    assert status == 0 and spawned == []  # a dry run plans: it runs no tool
    assert "updater.bootflow" in modules
    # A reboot back to a slot marked good runs no pre-reboot hooks; a dry run loads no kernel,
    # dumps no checkpoint, guards no signal and writes nothing.
    forbidden = ({"updater.inventory", "updater.hooks.stages", "updater.hooks.runner",
                  "updater.hooks.ledger", "updater.hooks.rules", "updater.quiesce.criu",
                  "updater.signals", "updater.atomicfile", "tempfile", "updater.release",
                  "subprocess",
                  "updater.commands.slots", "updater.agent"}
                 | FILE_BACKEND | NOT_HERE | GENERATED_CODE | QUICK)  # fmt: skip
    assert not loaded(modules, forbidden), loaded(modules, forbidden)

"""What a command imports at start-up, in a fresh interpreter: only its own command module, so
that ``updater verity format`` or ``updater --help`` do not pay for the boot path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

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

"""What a command imports at start-up, in a fresh interpreter: only its own command module, so
that ``updater verity format`` or ``updater --help`` do not pay for the boot path."""

from __future__ import annotations

import json
import subprocess
import sys

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

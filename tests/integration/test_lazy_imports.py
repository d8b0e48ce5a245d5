"""Commands that do not fetch or publish never load the network, signing or compression
stack: ``status`` and ``kexec`` run on small machines at boot, where start-up time counts."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("tuf", "requests", "urllib3", "zstandard", "securesystemslib", "cryptography")

PROBE = f"""
import sys
from updater import cli
for argv in (["status", "--help"], ["kexec", "--help"], ["repo", "--help"], ["releases", "-h"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
"""


def test_cli_and_help_load_no_heavy_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"

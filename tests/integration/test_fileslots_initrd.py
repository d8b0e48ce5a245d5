"""The initrd's file-backend function (``initrd-hooks/90updater/updater-files.sh``) under dash
and busybox sh, against the Python table (``updater.fileslots``) for every state it knows: the
same steps in the same order, the same directory afterwards, the same file mounted after a cut
at any step, and the same reading of the counter and the trailer, hostile ones included."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT as ROOT_DIR
from tests.integration.test_filebackend import make_state, put_image, root_tag, tag_hash
from updater import filebackend as fb
from updater import fileslots as fs
from updater.fileslots import BROKEN, NEW, OLD, ROOT, FileState

pytestmark = pytest.mark.integration

LIB = ROOT_DIR / "initrd-hooks" / "90updater" / "updater-files.sh"
SHELLS = [["dash"], ["busybox", "sh"]]


def shell(argv: list[str], script: str, *args: str, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    if shutil.which(argv[0]) is None:
        pytest.skip(f"needs {argv[0]} (not installed)")
    return subprocess.run([*argv, "-c", f'. "$0"; {script}', str(LIB), *args],
                          capture_output=True, text=True, timeout=60, env=env,
                          check=False)  # fmt: skip


def words(step: fs.Step) -> str:
    if step.kind == "rename":
        return f"rename {step.src} {step.dst}"
    if step.kind == "remove":
        return f"remove {step.src}"
    return f"set-tries {step.value}" if step.kind == "set-tries" else "mark-revert"


STATES = [
    FileState(frozenset(imgs), rv, t)
    for n in range(5)
    for imgs in itertools.combinations([ROOT, NEW, OLD, BROKEN], n)
    for rv in (False, True)
    for t in (None, 0, 1, 2)
]


@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_the_shell_plan_is_the_python_plan_for_every_state(sh: list[str],
                                                          tmp_path: Path) -> None:  # fmt: skip
    for i, start in enumerate(STATES):
        d = tmp_path / str(i)
        d.mkdir()
        make_state(d, start)
        proc = shell(sh, 'updater_files_promote "$1"', str(d))
        assert proc.returncode == 0 and proc.stderr == "", (start, proc.stderr)
        assert proc.stdout.splitlines() == [words(s) for s in fs.plan(start)], start
        assert fb.read(str(d)).state == fs.run(start), start
        assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_a_cut_at_any_shell_step_mounts_the_predicted_file(sh: list[str],
                                                          tmp_path: Path) -> None:  # fmt: skip
    for i, start in enumerate(s for s in STATES if s.images & {ROOT, NEW, OLD}):
        expected = fs.boots_next(start)
        for cut in range(len(fs.plan(start))):
            d = tmp_path / f"{i}-{cut}"
            d.mkdir()
            make_state(d, start)
            cut_env = {"UPDATER_FILES_CUT_AFTER": str(cut), "PATH": "/usr/bin:/bin"}
            shell(sh, 'updater_files_promote "$1"', str(d), env=cut_env)
            proc = shell(sh, 'updater_files_promote "$1"', str(d))
            assert proc.returncode == 0, proc.stderr
            assert root_tag(d) == tag_hash(expected or ""), (start, cut)


@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_counter_block_is_byte_identical(sh: list[str], tmp_path: Path) -> None:
    for value in range(10):
        proc = shell(sh, 'updater_files_tries_block "$1"', str(value))
        assert proc.stdout.encode() == fb.tries_block(value)


@pytest.mark.parametrize(
    "content",
    [b"files_tries=5\n", fb.tries_block(5)[:-1] + b"\n", b"x" + fb.tries_block(5)[1:],
     fb.tries_block(5).replace(b"files_tries=5", b"files_tries=X"),
     fb.tries_block(5).replace(b"files_tries=5\n", b"files_tries=\xc2\xb2"),
     fb.tries_block(5)],
    ids=["short", "no-padding-end", "bad-header", "not-a-digit", "unicode-digit", "good"],
)  # fmt: skip
@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_shell_and_python_read_a_counter_alike(sh: list[str], content: bytes,
                                               tmp_path: Path) -> None:  # fmt: skip
    put_image(tmp_path, ROOT)
    (tmp_path / fs.TRIES).write_bytes(content)
    proc = shell(sh, 'updater_files_tries "$1"', str(tmp_path))
    assert proc.stdout.strip() == str(fb.read(str(tmp_path)).state.tries)


@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_shell_reads_the_trailer(sh: list[str], tmp_path: Path) -> None:
    put_image(tmp_path, ROOT, "x")
    proc = shell(sh, 'updater_files_trailer "$1"', str(tmp_path / ROOT))
    assert proc.returncode == 0 and proc.stdout.split() == [tag_hash("x"), "4096"]
    for bad in (b"\0" * 8192, b"\0" * 4096 + b"UPDATER-FILESLOT 1\nroot_hash=ab\n" + b"\0" * 4000,
                b"\0" * 4096 + fb.Trailer(tag_hash("x"), 4096, 8192, "1").encode()
                .replace(b"hash_offset=4096", b"hash_offset=4;96")):  # fmt: skip
        (tmp_path / NEW).write_bytes(bad)
        assert shell(sh, 'updater_files_trailer "$1"', str(tmp_path / NEW)).returncode == 1


def test_grub_files_cfg_is_valid_grub_script() -> None:
    if shutil.which("grub-script-check") is None:
        pytest.skip("needs grub-script-check (not installed)")
    subprocess.run(["grub-script-check", str(ROOT_DIR / "grub" / "grub-files.cfg")], check=True)


# GRUB's commands the choice uses, as sh functions with GRUB's behaviour: load_env sets only the
# named variables and only from a whole environment block (else it fails and sets nothing);
# regexp matches an extended regular expression.
GRUB_SHIMS = r"""
load_env() {
    [ "$1" = -f ] || return 1
    [ "$(wc -c < "$2")" = 1024 ] || return 1
    [ "$(head -n 1 "$2")" = "# GRUB Environment Block" ] || return 1
    _file=$2
    shift 2
    for _var in "$@"; do
        _line=$(grep -a "^$_var=" "$_file" | tail -n 1)
        [ -n "$_line" ] && eval "$_var=\${_line#*=}"
    done
    return 0
}
regexp() { printf '%s\n' "$2" | grep -Eq "$1"; }
"""


def grub_choice() -> str:
    text = (ROOT_DIR / "grub" / "grub-files.cfg").read_text()
    start = text.index("# --- the choice")
    body = text[start : text.index("# --- end of the choice")]
    # GRUB's `set NAME=VALUE` is sh's `NAME=VALUE`; everything else in the choice is the same
    # in both languages ([ -f ], [ -z ], [ = ], if/elif/else/fi, !).
    return GRUB_SHIMS + re.sub(r"(?m)^(\s*)set (\w+)=", r"\1\2=", body) + 'echo "$image"\n'


@pytest.mark.parametrize("sh", SHELLS, ids=lambda a: a[0])
def test_grub_picks_the_file_the_initrd_will_mount(sh: list[str], tmp_path: Path) -> None:
    script = grub_choice()
    for i, start in enumerate(s for s in STATES if s.images & {ROOT, NEW, OLD}):
        d = tmp_path / str(i)
        d.mkdir()
        make_state(d, start)
        proc = shell(sh, f'd="$1"\n{script}', str(d))
        assert proc.stdout.strip() == fs.boots_next(start), (start, proc.stderr)
    # an unreadable counter is spent for GRUB as for the initrd
    d = tmp_path / "garbled"
    d.mkdir()
    make_state(d, FileState(frozenset({ROOT, OLD})))
    (d / fs.TRIES).write_bytes(b"files_tries=5\n")
    assert shell(sh, f'd="$1"\n{script}', str(d)).stdout.strip() == OLD

"""Mutation score of the pure core against the unit tier, module by module (mutmut 3).

For each pure module the script copies the repository's ``updater/``, ``tests/`` and
``pyproject.toml`` into a work directory of its own, lets mutmut mutate that one module, runs
the unit tier against every mutant (mutmut picks, per mutated function, the unit tests that call
it), and prints the module's score and every mutant no test killed, with its diff. Mutants that
cannot change any behaviour are listed, each with one line saying why, in
``benchmarks/mutation-equivalent.txt``; they are the only ones left out of the score:

    score = killed / (mutants - listed equivalent)

A mutant that makes the tests time out or crash counts as killed; one that no unit test reaches
counts as survived. An equivalence entry names the mutant and a digest of its changed lines; it
is matched by the function and the digest, not by mutmut's running number (which shifts when
the function gains or loses a line), so an entry that no longer describes any mutant of its
function (the code changed) is reported as stale and the mutant counts as survived again.

mutmut is pinned in ``benchmarks/mutation-requirements.txt`` and installed, with the project's
runtime and test dependencies (not the project itself: the mutated copy must be the one tests
import), into a throw-away virtual environment under the cache directory. Too slow for CI
(about 5 to 30 minutes a module on two cores); run it by hand, module by module:

    .venv/bin/python benchmarks/mutation.py slots gptformat      # run these modules
    .venv/bin/python benchmarks/mutation.py --all                # every pure module
    .venv/bin/python benchmarks/mutation.py --report             # the last results of each
    .venv/bin/python benchmarks/mutation.py --survivors slots    # rerun only the survivors

Each run's output stays in ``~/.cache/updater/mutation/MODULE/`` (``run.log``, ``results.json``).
``--survivors`` refreshes the tests of the last run of a module and runs only its mutants that
were not killed (quick while writing tests). The README's table comes from full runs, followed
by such a rerun where tests were only added since; a module whose code changed is run in full.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "mutation-requirements.txt"
EQUIVALENT = ROOT / "benchmarks" / "mutation-equivalent.txt"
GOAL = 0.95

# The pure core: no subprocess, no file or network I/O (config.py reads its file in `load`
# only). Each module is tested against the unit test files of the module itself and of its
# direct users; a subset of the unit tier, so a score here is a lower bound of the score
# against the whole tier (which takes hours on two cores; `--whole-tier` runs it).
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "slots": ("updater/slots.py", ("test_slots", "test_gptformat", "test_grubenv")),
    "gptformat": ("updater/gptformat.py", ("test_gptformat", "test_gptformat_checks")),
    "cmdline": ("updater/cmdline.py", ("test_cmdline", "test_kexec", "test_initrdcpio")),
    "verity": ("updater/verity.py", ("test_verity", "test_veritycheck")),
    "grubenv": ("updater/grubenv.py", ("test_grubenv",)),
    "initrdcpio": ("updater/initrdcpio.py", ("test_initrdcpio",)),
    "release": ("updater/release.py", ("test_release",)),
    "frames": ("updater/frames.py", ("test_frames", "test_slotwrite_facts", "test_release")),
    "veritycheck": ("updater/veritycheck.py", ("test_veritycheck",)),
    "config": ("updater/config.py", ("test_config", "test_config_values", "test_config_cache")),
    "agent.schedule": ("updater/agent/schedule.py", ("test_agent_schedule", "test_agent_machine")),
    "agent.machine": ("updater/agent/machine.py", ("test_agent_machine", "test_agent_runner")),
    "rebootlock.semaphore": ("updater/rebootlock/semaphore.py", ("test_rebootlock",)),
    "fileslots": ("updater/fileslots.py", ("test_fileslots",)),
    "records": ("updater/records.py", ("test_records",)),
    "guid": ("updater/guid.py", ("test_guid", "test_gptformat", "test_cmdline")),
}

# mutmut's exit-code verdicts: a test failure, a timeout or a crash is a detected mutant.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "updater" / "mutation"


def dependencies() -> list[str]:
    """The project's runtime dependencies and the unit tier's test tools, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    wanted = ("pytest", "pytest-timeout", "hypothesis")
    tools = [d for d in dev if d.split(">")[0].split("=")[0] in wanted]
    return [*project["dependencies"], *tools]


def ensure_venv(base: Path) -> Path:
    """The throw-away environment: mutmut and the dependencies, keyed by what they are."""
    want = [*dependencies(), "-r", str(REQUIREMENTS)]
    key = hashlib.sha256(json.dumps(want).encode() + REQUIREMENTS.read_bytes()).hexdigest()[:12]
    path = base / f"venv-{key}"
    python = path / "bin" / "python"
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        venv.create(path, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *want], check=True)
        (path / ".complete").write_text("")
    return python


def mutmut_config(module_path: str, tests: list[str]) -> str:
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["updater"]\n'
        f'only_mutate = ["{module_path}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        'also_copy = ["README.md"]\n'
        "use_git_change_detection = false\n"
    )


def copy_tree(workdir: Path, module_path: str, tests: list[str]) -> None:
    for name in ("updater", "tests"):
        shutil.rmtree(workdir / name, ignore_errors=True)
        shutil.copytree(
            ROOT / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy2(ROOT / "README.md", workdir / "README.md")  # test_config compares with it
    text = (ROOT / "pyproject.toml").read_text()
    (workdir / "pyproject.toml").write_text(text + mutmut_config(module_path, tests))


def run_module(
    python: Path, name: str, jobs: int, survivors_only: bool, whole_tier: bool
) -> None:
    module_path, test_names = MODULES[name]
    tests = ["tests/unit"] if whole_tier else [f"tests/unit/{t}.py" for t in test_names]
    workdir = cache_dir() / name
    names: list[str] = []
    if survivors_only:
        previous = load_results(name)
        if previous is None:
            raise SystemExit(f"mutation: no earlier run of {name} to take survivors from")
        names = [m for m, r in previous["mutants"].items() if r["status"] not in KILLED]
        if not names:
            print(f"{name}: no survivors to rerun")
            return
        copy_tree(workdir, module_path, tests)
        # mutmut copies tests once and keeps which tests reach which function: refresh both.
        shutil.rmtree(workdir / "mutants" / "tests", ignore_errors=True)
        shutil.copytree(workdir / "tests", workdir / "mutants" / "tests")
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        copy_tree(workdir, module_path, tests)
    mutmut = python.parent / "mutmut"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    env["UPDATER_HYPOTHESIS_PROFILE"] = "mutation"  # tests/conftest.py: no deadline, derandomized
    log = workdir / ("rerun.log" if survivors_only else "run.log")
    print(f"{name}: mutating {module_path} (log: {log})", flush=True)
    with log.open("w") as out:
        run = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *names],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
        )
    if run.returncode != 0:
        raise SystemExit(f"mutation: mutmut failed on {name} (exit {run.returncode}); see {log}")
    result = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--collect", module_path],
        cwd=workdir, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"mutation: collecting {name} failed:\n{result.stderr}")
    collected = json.loads(result.stdout)
    if survivors_only:
        merged = load_results(name)
        assert merged is not None
        merged["mutants"].update({k: v for k, v in collected["mutants"].items() if k in names})
        collected = merged
    (workdir / "results.json").write_text(json.dumps(collected, indent=1, sort_keys=True))


def collect(module_path: str) -> None:
    """Runs inside the throw-away environment, in a module's work directory."""
    data_mod: Any = importlib.import_module("mutmut.mutation.data")
    stats_mod: Any = importlib.import_module("mutmut.stats")
    diff_mod: Any = importlib.import_module("mutmut.mutation.diff_apply")
    data = data_mod.SourceFileMutationData(path=Path(module_path))
    data.load()
    mutants: dict[str, dict[str, str]] = {}
    for key, code in sorted(data.exit_code_by_key.items()):
        status = str(stats_mod.status_by_exit_code[code])
        diff = "" if status in KILLED else str(diff_mod.get_diff_for_mutant(key, path=module_path))
        mutants[key] = {"status": status, "diff": diff}
    json.dump({"module": module_path, "mutants": mutants}, sys.stdout)


def load_results(name: str) -> dict[str, Any] | None:
    path = cache_dir() / name / "results.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def digest(diff: str) -> str:
    """The changed lines of a mutant's diff, without positions: stable while the change is."""
    changed = [
        line for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return hashlib.sha256("\n".join(changed).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Equivalent:
    name: str
    digest: str
    why: str


def function_of(key: str) -> str:
    """The mutated function of a mutant's name: ``updater.x.x_f__mutmut_7`` -> ``updater.x.x_f``."""
    return key.rsplit("__mutmut_", 1)[0]


def load_equivalents() -> dict[tuple[str, str], Equivalent]:
    """The entries, keyed by (mutated function, digest of the change)."""
    entries: dict[tuple[str, str], Equivalent] = {}
    for number, line in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise SystemExit(f"{EQUIVALENT.name}:{number}: want NAME DIGEST WHY")
        entry = Equivalent(*parts)
        entries[function_of(entry.name), entry.digest] = entry
    return entries


@dataclass
class Score:
    module: str
    total: int = 0
    killed: int = 0
    equivalent: int = 0
    survivors: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        counted = self.total - self.equivalent
        return self.killed / counted if counted else 1.0


def score(
    name: str, results: dict[str, Any], equivalents: dict[tuple[str, str], Equivalent]
) -> Score:
    s = Score(name)
    matched: set[tuple[str, str]] = set()
    for key, result in results["mutants"].items():
        s.total += 1
        status, diff = result["status"], result["diff"]
        found = (function_of(key), digest(diff))
        eq = equivalents.get(found)
        if eq is not None:
            matched.add(found)
        if status in KILLED:
            s.killed += 1
            if eq is not None:
                s.problems.append(f"{key} is listed as equivalent ({eq.name}) but a test kills it")
        elif eq is not None:
            s.equivalent += 1
        else:
            s.survivors.append((key, status, diff))
    prefix = MODULES[name][0].removesuffix(".py").replace("/", ".") + "."
    for found, eq in equivalents.items():
        ours = eq.name.startswith(prefix) and "." not in eq.name[len(prefix) :]
        if ours and found not in matched:
            s.problems.append(f"{eq.name}: stale equivalence entry (no mutant of its function "
                              "makes this change any more)")  # fmt: skip
    return s


def report(names: list[str], show_survivors: bool) -> bool:
    equivalents = load_equivalents()
    scores = []
    for name in names:
        results = load_results(name)
        if results is None:
            print(f"{name}: never run")
            continue
        scores.append(score(name, results, equivalents))
    if show_survivors:
        for s in scores:
            for key, status, diff in s.survivors:
                print(f"\n--- {status}: {key}  (digest {digest(diff)})")
                print("\n".join(diff.splitlines()[2:]))
            for problem in s.problems:
                print(f"!!! {problem}")
    print(f"\n{'module':<22}{'mutants':>8}{'killed':>8}{'equiv':>7}{'survived':>9}{'score':>8}")
    ok = True
    for s in scores:
        print(
            f"{s.module:<22}{s.total:>8}{s.killed:>8}{s.equivalent:>7}"
            f"{len(s.survivors):>9}{s.score:>8.1%}"
        )
        ok = ok and s.score >= GOAL and not s.problems
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument("--all", action="store_true", help="every pure module")
    parser.add_argument("--report", action="store_true", help="print the last results only")
    parser.add_argument("--survivors", action="store_true", help="rerun only the survivors")
    parser.add_argument("--whole-tier", action="store_true", help="every unit test file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--collect", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:
        collect(args.collect)
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}: choose from {', '.join(MODULES)}")
    if not (args.modules or args.all or args.report):
        parser.error("name the modules to run, or --all, or --report")
    names = list(MODULES) if args.all or not args.modules else args.modules
    if not args.report:
        python = ensure_venv(cache_dir())
        for name in names:
            run_module(python, name, args.jobs, args.survivors, args.whole_tier)
    ok = report(names, show_survivors=True)
    print(f"\ngoal: at least {GOAL:.0%} of the non-equivalent mutants of every module killed:"
          f" {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The file backend's prepared-kexec record and the shutdown check, with the kexec commands
recorded instead of run (the command-line paths: tests/integration/test_fileprepared.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from updater import fileprepared, kexec
from updater.errors import DataError, SlotError
from updater.fileboot import FilePlan
from updater.records import replace

PLAN = FilePlan("root-new.img", "2", "22" * 32, "/var/lib/images/boot/k", None, "console=tty0")
GOOD: dict[str, Any] = {
    "format": "files-1", "method": "kexec_file_load", "pre_reboot_hooks": ["10-a"],
    "plan": {"image": "root-new.img", "version": "2", "root_hash": "22" * 32,
             "kernel": "/var/lib/images/boot/k", "initrd": None, "cmdline": "console=tty0"},
}  # fmt: skip


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(kexec.Step, "run", lambda step: calls.append(step.argv))
    return calls


def write(doc: object) -> None:
    Path(fileprepared.RECORD).write_text(json.dumps(doc))


def test_the_record_reads_back_what_was_written() -> None:
    record = fileprepared.Record(PLAN, "kexec_file_load", ("10-a",))
    Path(fileprepared.RECORD).write_text(json.dumps(record.to_json()))
    assert fileprepared.read_record() == record
    assert record.to_json() == GOOD


@pytest.mark.parametrize(("change", "why"), [
    ({"format": 1}, "another format"),
    ({"plan": {**GOOD["plan"], "extra": "x"}}, "the plan's fields"),
    ({"plan": {**GOOD["plan"], "version": 2}}, "the plan's field types"),
    ({"plan": {**GOOD["plan"], "kernel": None}}, "the plan's field types"),
    ({"plan": ["root-new.img"]}, "the plan's fields"),
    ({"method": 1}, "field types"),
    ({"pre_reboot_hooks": "10-a"}, "field types"),
    ({"pre_reboot_hooks": [1]}, "field types"),
])  # fmt: skip
def test_a_record_of_another_shape_is_refused(change: dict[str, object], why: str) -> None:
    write({**GOOD, **change})
    with pytest.raises(DataError, match=rf"is not a prepared-kexec record of the file backend "
                                        rf"\({why}\)$"):  # fmt: skip
        fileprepared.read_record()


def test_a_missing_field_and_an_oversized_record_are_refused() -> None:
    write({k: v for k, v in GOOD.items() if k != "method"})
    with pytest.raises(DataError, match="of the file backend \\('method'\\)$"):
        fileprepared.read_record()
    Path(fileprepared.RECORD).write_bytes(b" " * (fileprepared.MAX_RECORD + 1))
    with pytest.raises(DataError, match="is larger than 65536 bytes$"):
        fileprepared.read_record()


def test_hooks_ran_only_for_the_very_plan_and_only_when_asked() -> None:
    assert not fileprepared.hooks_ran(PLAN)  # no record
    write(GOOD)
    assert fileprepared.hooks_ran(PLAN)
    assert not fileprepared.hooks_ran(replace(PLAN, cmdline="console=ttyS0"))
    write({**GOOD, "pre_reboot_hooks": None})
    assert not fileprepared.hooks_ran(PLAN)
    write({**GOOD, "pre_reboot_hooks": []})  # none were due: they count as run
    assert fileprepared.hooks_ran(PLAN)
    Path(fileprepared.RECORD).write_text("{")
    assert not fileprepared.hooks_ran(PLAN)


def loaded(value: str) -> None:
    Path(fileprepared.KEXEC_LOADED).write_text(value)


def test_check_keeps_the_kernel_of_the_same_plan(ran: list[tuple[str, ...]]) -> None:
    write(GOOD)
    loaded("1\n")
    done = fileprepared.check(lambda: PLAN)
    assert (done.action, done.reason, ran) == ("kept", None, [])
    assert not Path(fileprepared.RECORD).exists()


def test_check_unloads_when_the_plan_cannot_be_made(ran: list[tuple[str, ...]]) -> None:
    write(GOOD)
    loaded("1\n")

    def broken() -> FilePlan:
        raise SlotError("/var/lib/images: no image would boot")

    done = fileprepared.check(broken)
    assert (done.action, done.reason) == ("unloaded", "/var/lib/images: no image would boot")
    assert ran == [("kexec", "-u")] and not Path(fileprepared.RECORD).exists()


@pytest.mark.parametrize("flag", ["0\n", "", None])
def test_check_unloads_nothing_when_no_kernel_is_loaded(ran: list[tuple[str, ...]],
                                                        flag: str | None) -> None:  # fmt: skip
    write(GOOD)
    if flag is not None:
        loaded(flag)
    done = fileprepared.check(lambda: PLAN)
    assert (done.action, ran) == ("not-loaded", [])
    assert not Path(fileprepared.RECORD).exists()


def test_check_without_a_record_does_nothing(ran: list[tuple[str, ...]]) -> None:
    loaded("1\n")
    assert fileprepared.check(lambda: PLAN).action == "none" and ran == []

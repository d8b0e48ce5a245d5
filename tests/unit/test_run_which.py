"""``run.which`` answers as ``shutil.which`` does on Linux (the oracle), over executable and
plain files, directories, links, repeated and empty PATH entries and names with a slash."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from updater.run import which


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()

    def put(rel: str, mode: int) -> None:
        path = tmp_path / rel
        path.write_text("#!/bin/sh\n")
        path.chmod(mode)

    put("a/plain", 0o644)  # not executable
    put("b/plain", 0o755)
    put("b/tool", 0o755)
    put("c/tool", 0o755)
    (tmp_path / "a" / "tool").mkdir()  # a directory of that name comes first
    (tmp_path / "c" / "link").symlink_to(tmp_path / "b" / "tool")
    (tmp_path / "c" / "dangling").symlink_to(tmp_path / "nowhere")
    put("here", 0o755)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_which_agrees_with_the_standard_library(tree: Path) -> None:
    a, b, c = (str(tree / d) for d in ("a", "b", "c"))
    paths = [f"{a}:{b}:{c}", f"{c}:{b}", f"{a}:{a}:{c}", f"{a}::{b}", "", f"{tree}/none:{c}"]
    names = ["plain", "tool", "link", "dangling", "missing", "here", "./here", f"{b}/tool",
             f"{a}/plain", f"{a}/tool", "b/tool"]  # fmt: skip
    for path in paths:
        for name in names:
            assert which(name, path) == shutil.which(name, path=path), (name, path)


def test_the_default_is_our_path(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tree / 'c'}:{tree / 'b'}")
    assert which("tool") == shutil.which("tool") == str(tree / "c" / "tool")
    monkeypatch.delenv("PATH")
    assert which("sh") == shutil.which("sh")
    assert os.defpath  # the fallback both use

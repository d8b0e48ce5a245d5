"""The resume journal's codec and its atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from updater.errors import DataError
from updater.slotwrite import journal
from updater.slotwrite.journal import Journal

DEST = {"path": "/dev/vda4", "base": ["disk", 253, 0], "start": 1048576, "size": 8, "label": "x"}


def test_round_trip_and_what_resumes() -> None:
    entry = Journal("ab" * 32, DEST, 32, 7)
    assert Journal.decode(entry.encode()) == entry
    assert json.loads(entry.encode())["format"] == journal.FORMAT
    assert entry.resumes("ab" * 32, dict(DEST), 32)
    assert not entry.resumes("cd" * 32, DEST, 32)
    assert not entry.resumes("ab" * 32, {**DEST, "start": 0}, 32)
    assert not entry.resumes("ab" * 32, DEST, 33)


COUNTS = b'{"format": 1, "image": "a", "destination": {}, "frames": %b, "frames_done": %b}'


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff", "not JSON"),
        (b'{"format": 2}', "unknown format"),
        (b'{"format": 1, "image": 5, "destination": {}}', "lacks the image"),
        (COUNTS % (b"-1", b"0"), "frame count"),
        (COUNTS % (b"2", b"3"), "frame count"),
        (COUNTS % (b"2", b"1.0"), "frame count"),
        (COUNTS % (b"true", b"0"), "frame count"),
    ],
)
def test_damaged_journal_is_a_data_error(raw: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Journal.decode(raw)


def test_save_replaces_atomically_and_remove_forgets(tmp_path: Path) -> None:
    assert journal.load(str(tmp_path)) is None
    journal.save(str(tmp_path), Journal("a", DEST, 3, 1))
    journal.save(str(tmp_path), Journal("a", DEST, 3, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [journal.FILENAME]
    assert (tmp_path / journal.FILENAME).stat().st_mode & 0o777 == 0o600
    loaded = journal.load(str(tmp_path))
    assert loaded is not None and loaded.frames_done == 2
    journal.remove(str(tmp_path))
    journal.remove(str(tmp_path))
    assert journal.load(str(tmp_path)) is None


def test_oversized_or_symlinked_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / journal.FILENAME).write_bytes(b" " * (journal.MAX_SIZE + 1))
    with pytest.raises(DataError, match="larger than"):
        journal.load(str(tmp_path))
    (tmp_path / journal.FILENAME).unlink()
    (tmp_path / "elsewhere").write_bytes(Journal("a", DEST, 3, 1).encode())
    (tmp_path / journal.FILENAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="cannot open"):
        journal.load(str(tmp_path))

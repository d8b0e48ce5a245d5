"""A repository copy in one tar archive (``install --image``): the same client and verification
as over HTTP, members read in place and bounded, and archives that are hostile or unusable."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError

from tests.unit.memrepo import MemoryRepo, make_image
from updater.errors import DataError, TransportError, VerificationError
from updater.fetch.archive import ArchiveFetcher
from updater.fetch.client import ReleaseClient, archive_endpoint


def tar_of(files: Mapping[str, bytes], path: Path, extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return path


@pytest.fixture
def repo() -> MemoryRepo:
    """Two releases published by the project's own code, in memory."""
    published = MemoryRepo()
    for version in ("1", "2"):
        published.add(version)
    return published


def client_of(archive: Path, repo: MemoryRepo, cache: Path) -> ReleaseClient:
    return ReleaseClient(archive_endpoint(str(archive)), cache, repo.root())


def test_a_tar_of_the_repository_serves_releases(repo: MemoryRepo, tmp_path: Path) -> None:
    files = {f"./{name}": data for name, data in repo.storage.files.items()}
    c = client_of(tar_of(files, tmp_path / "release.tar"), repo, tmp_path / "cache")
    c.refresh()
    found = c.releases("stable", "x86_64")
    assert found is not None and [str(r.version) for r in found] == ["1", "2"]
    usr = c.target(found[1].image.usr.path)
    assert usr is not None
    whole = b"".join(c.source(usr).open())
    assert len(whole) == usr.length and b"".join(c.source(usr).open(1000)) == whole[1000:]
    kernel = c.target(found[1].kernel.path)
    assert kernel is not None and c.read(kernel) == make_image(200).kernel


def test_a_changed_member_fails_verification(repo: MemoryRepo, tmp_path: Path) -> None:
    files = dict(repo.storage.files)
    name = next(n for n in files if "/x86_64/2/" in n and n.endswith(".vmlinuz"))
    files[name] = files[name][:-1] + b"!"
    c = client_of(tar_of(files, tmp_path / "release.tar"), repo, tmp_path / "cache")
    c.refresh()
    found = c.releases("stable", "x86_64")
    assert found is not None
    kernel = c.target(found[1].kernel.path)
    assert kernel is not None
    with pytest.raises(VerificationError, match="does not match its signed length or hash"):
        c.read(kernel)


def test_members_outside_the_repository_do_not_count(repo: MemoryRepo, tmp_path: Path) -> None:
    sneaky = tarfile.TarInfo("metadata/timestamp.json")
    sneaky.type = tarfile.SYMTYPE
    sneaky.linkname = "/etc/shadow"
    files = {"../metadata/x.json": b"{}", "etc/passwd": b"root", "metadata/../../y": b"1",
             "metadata/1.root.json": repo.root()}  # fmt: skip
    fetcher = ArchiveFetcher(str(tar_of(files, tmp_path / "a.tar", (sneaky,))))
    assert set(fetcher.members) == {"metadata/1.root.json"}
    with pytest.raises(TransportError, match="not a file of the repository archive"):
        list(fetcher.stream("tar:///metadata/../etc/passwd"))
    with pytest.raises(DownloadHTTPError, match="not found"):
        list(fetcher.stream("tar:///metadata/timestamp.json"))


def test_unusable_archives(tmp_path: Path) -> None:
    plain = tar_of({"metadata/root.json": b"{}"}, tmp_path / "a.tar")
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(DataError, match="compressed"):
        ArchiveFetcher(str(tmp_path / "a.tar.gz"))
    with pytest.raises(DataError, match="holds metadata/root.json twice"):
        ArchiveFetcher(str(tar_of({"metadata/root.json": b"1", "./metadata/root.json": b"2"},
                                  tmp_path / "b.tar")))  # fmt: skip
    with pytest.raises(DataError, match="no metadata/ directory"):
        ArchiveFetcher(str(tar_of({"targets/x": b"1"}, tmp_path / "c.tar")))
    (tmp_path / "d.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a tar archive|no metadata"):
        ArchiveFetcher(str(tmp_path / "d.tar"))
    with pytest.raises(DataError, match="cannot read"):
        ArchiveFetcher(str(tmp_path / "missing.tar"))


def test_a_member_is_read_to_its_signed_length_and_no_further(tmp_path: Path) -> None:
    fetcher = ArchiveFetcher(str(tar_of({"metadata/r": b"x", "targets/t": b"0123456789"},
                                        tmp_path / "a.tar")))  # fmt: skip
    assert b"".join(fetcher.stream("tar:///targets/t", 3, 10)) == b"3456789"
    with pytest.raises(VerificationError, match="longer than its signed length"):
        list(fetcher.stream("tar:///targets/t", 0, 5))
    with pytest.raises(VerificationError, match="truncated"):
        list(fetcher.stream("tar:///targets/t", 0, 50))

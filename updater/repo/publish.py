"""Adding a release to a repository: frames, targets, custom metadata, the channel index.

One ``add_release`` writes the compressed USR image (independent zstd frames, see
``updater.frames``), the kernel and the optional initrd as target files, then the channel index
with the new version, and publishes all of them in ONE new targets version (then snapshot and
timestamp): a client sees the whole release or none of it.

Before publishing, the release is read back through the client's own validation
(``updater.release``): what a publisher writes is exactly what clients accept.

This module does not read image files (``updater.repo.image`` states their facts; the command
streams the bytes in), and it never removes a release.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tuf.api.metadata import TargetFile, Targets

from updater import frames, release
from updater.errors import UsageError
from updater.release import Release, SignedTarget, Version
from updater.repo.image import UsrFacts
from updater.repo.repository import DEFAULT_EXPIRY, Expiry, Repository


def signed_target(target: TargetFile) -> SignedTarget:
    """A TargetFile as ``updater.release`` takes it (no TUF types below this line)."""
    return SignedTarget(target.path, target.length, dict(target.hashes), target.custom)


def published_versions(repo: Repository, channel: str, arch: str) -> list[Version]:
    index = repo.targets_md().signed.targets.get(release.index_path(channel, arch))
    if index is None:
        return []
    entries = release.parse_index(repo.read_target(index), channel, arch)
    return [e.version for e in entries]


def add_release(
    repo: Repository,
    *,
    channel: str,
    arch: str,
    version: Version,
    usr: Iterable[bytes],
    facts: UsrFacts,
    kernel: bytes,
    initrd: bytes | None,
    frame_size: int = frames.DEFAULT_FRAME_SIZE,
    level: int = frames.DEFAULT_LEVEL,
    expiry: Expiry = DEFAULT_EXPIRY,
    waves: tuple[tuple[int, str], ...] = (),
) -> Release:
    versions = published_versions(repo, channel, arch)
    usr_name = release.usr_path(channel, arch, version)
    if version in versions or usr_name in repo.targets_md().signed.targets:
        raise UsageError(
            f"release {version} is already published for {channel}/{arch}",
            hint="releases are immutable: publish a new version",
        )
    builder = frames.TableBuilder(frame_size)

    def compressed() -> Iterator[bytes]:
        for data, length in frames.compress_frames(usr, frame_size, level):
            yield builder.add(data, length)

    usr_target = repo.put_target(usr_name, compressed())
    if builder.size != facts.size:
        raise UsageError(f"the USR image changed while it was read ({builder.size} bytes read)")
    kernel_name = release.kernel_path(channel, arch, version)
    initrd_name = release.initrd_path(channel, arch, version) if initrd is not None else None
    image = release.UsrImage(
        version, channel, arch, facts.fs_type,
        release.Target(usr_name, usr_target.length, usr_target.hashes["sha256"]),
        facts.size, facts.verity, builder.table(), kernel_name, initrd_name, waves,
    )  # fmt: skip
    usr_target.unrecognized_fields["custom"] = release.usr_custom(image)
    added = [usr_target]
    for kind, name, data in (("kernel", kernel_name, kernel), ("initrd", initrd_name, initrd)):
        if name is not None and data is not None:
            custom = release.part_custom(kind, channel, arch, version)
            added.append(repo.put_target(name, [data], custom))
    index_data = release.render_index(channel, arch, [*versions, version])
    added.append(repo.put_target(release.index_path(channel, arch), [index_data]))
    by_path = {t.path: signed_target(t) for t in added}
    checked = release.read_release(channel, arch, version, by_path.get)

    def edit(targets: Targets) -> None:
        for target in added:
            targets.targets[target.path] = target

    repo.change_targets(edit, expiry)
    return checked

"""The release model: versions, the signed custom metadata and the index as hostile input, and
the choice of a release. Expected values come from the release format in the README (and the
frame arithmetic written out by hand), not from the module."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from updater import release
from updater.errors import ReleaseError, VerificationError
from updater.release import SignedTarget, Version, choose, parse_version

MiB = 1 << 20
SHA = "ab" * 32


# ------------------------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("text", "key"),
    [("2", (2, 0, 0, 0)), ("3815.2.0", (3815, 2, 0, 0)), ("0", (0, 0, 0, 0)),
     ("999999.0.0.1", (999999, 0, 0, 1)), ("10.20.30.40", (10, 20, 30, 40))],
)  # fmt: skip
def test_versions_parse(text: str, key: tuple[int, ...]) -> None:
    v = parse_version(text)
    assert v.key == key and str(v) == text


@pytest.mark.parametrize(
    "text", ["", "01", "1.02", "1.2.3.4.5", "1000000", "1.", ".1", "a", " 1", "1e3", "-1", 2, None]
)
def test_malformed_versions_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="not a version"):
        parse_version(text)


@pytest.mark.parametrize(
    ("low", "high"),
    [("2", "3"), ("3815.2.0", "3815.10"), ("9", "10"), ("1.999999", "2"), ("2", "2.0.0.1")],
)
def test_versions_compare_numerically(low: str, high: str) -> None:
    assert parse_version(low) < parse_version(high)
    assert parse_version(high) > parse_version(low)


def test_missing_components_are_zero() -> None:
    assert parse_version("2") == parse_version("2.0.0")
    assert hash(parse_version("2")) == hash(parse_version("2.0"))


# ---------------------------------------------------------------------------- the usr target


def usr_doc(version: str = "3", channel: str = "stable", arch: str = "x86_64") -> dict[str, Any]:
    """A valid usr target: 3 MiB + 8192 bytes in frames of 1 MiB (4 frames, the last of 8192
    bytes). The hash area starts at 3 MiB - 24576: 762 data blocks need 6 leaf hash blocks
    (128 digests each) and 1 top block, plus the superblock's block: 8 blocks, 32768 bytes,
    which end exactly at the image's end."""
    size = 3 * MiB + 8192
    frames = [[1000, SHA], [2000, SHA], [3000, SHA], [40, SHA]]
    base = f"{channel}/{arch}/{version}"
    return {
        "path": f"{base}/usr.img.zst",
        "length": 6040,
        "custom": {
            "updater": {
                "format": 1, "kind": "usr", "version": version, "channel": channel,
                "arch": arch, "size": size, "fs_type": "squashfs",
                "verity": {"root_hash": "0f" * 32, "hash_offset": 3 * MiB - 24576,
                           "algorithm": "sha256", "block_size": 4096},
                "frame_size": MiB, "frames": frames,
                "kernel": f"{base}/vmlinuz", "initrd": f"{base}/initrd",
            }
        },
    }  # fmt: skip


def signed(doc: dict[str, Any]) -> SignedTarget:
    return SignedTarget(doc["path"], doc["length"], {"sha256": SHA}, doc["custom"])


def part_doc(kind: str, version: str = "3", channel: str = "stable", arch: str = "x86_64") -> Any:
    name = "vmlinuz" if kind == "kernel" else "initrd"
    custom = {"format": 1, "kind": kind, "version": version, "channel": channel, "arch": arch}
    return {"path": f"{channel}/{arch}/{version}/{name}", "length": 100,
            "custom": {"updater": custom}}  # fmt: skip


def test_a_valid_usr_target_becomes_a_frozen_value() -> None:
    image = release.parse_usr(signed(usr_doc()), "stable", "x86_64", parse_version("3"))
    assert image.size == 3 * MiB + 8192
    assert image.verity.hash_offset == 3 * MiB - 24576
    assert image.frames.frame_size == MiB and len(image.frames.frames) == 4
    assert image.frames.compressed_offset(3) == 6000
    assert image.kernel_path == "stable/x86_64/3/vmlinuz"
    assert image.initrd_path == "stable/x86_64/3/initrd"
    with pytest.raises(AttributeError):
        image.size = 1  # type: ignore[misc]


def test_publisher_rendering_reads_back() -> None:
    image = release.parse_usr(signed(usr_doc()), "stable", "x86_64", parse_version("3"))
    assert release.usr_custom(image) == usr_doc()["custom"]


Mutation = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        doc["custom"]["updater"][key] = value

    return apply


def _verity(key: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        doc["custom"]["updater"]["verity"][key] = value

    return apply


def _top(key: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        doc[key] = value

    return apply


def _frames(value: Any) -> Mutation:
    return _set("frames", value)


BAD_USR: list[tuple[str, Mutation, str]] = [
    ("no custom", _top("custom", None), "no 'updater' custom metadata"),
    ("custom not an object", _top("custom", {"updater": [1]}), "not an object"),
    ("extra field", _set("extra", 1), r"extra \['extra'\]"),
    ("format 2", _set("format", 2), "format: 2, expected 1"),
    ("kind", _set("kind", "kernel"), "kind: 'kernel'"),
    ("version of another release", _set("version", "4"), "version: '4', expected '3'"),
    ("channel", _set("channel", "beta"), "channel: 'beta'"),
    ("wrong architecture", _set("arch", "arm64"), "arch: 'arm64', expected 'x86_64'"),
    ("size a bool", _set("size", True), "size: True"),
    ("size huge", _set("size", 1 << 50), "size: .* not a whole number"),
    ("size not whole blocks", _set("size", 3 * MiB + 8191), "not a multiple of 4096"),
    ("fs type", _set("fs_type", "ext4"), "fs_type: 'ext4'"),
    ("root hash upper case", _verity("root_hash", "0F" * 32), "root_hash"),
    ("root hash short", _verity("root_hash", "0f" * 31), "root_hash"),
    ("algorithm", _verity("algorithm", "sha1"), "algorithm: 'sha1'"),
    ("block size", _verity("block_size", 512), "block_size: 512"),
    ("hash offset past the end", _verity("hash_offset", 3 * MiB + 8192), "hash_offset"),
    ("hash offset unaligned", _verity("hash_offset", 3 * MiB - 24575), "multiple of 4096"),
    ("no room for the tree", _verity("hash_offset", 3 * MiB), "needs 32768 bytes after it"),
    ("frame size not MiB", _set("frame_size", MiB + 4096), "frame size"),
    ("frame count", _frames([[6040, SHA]]), "1 frames for"),
    ("frame length sum", _frames([[1000, SHA], [2000, SHA], [3000, SHA], [41, SHA]]),
     "6041 compressed bytes in all, but the signed length is 6040"),
    ("frame hash", _frames([[1000, SHA], [2000, "x" * 64], [3000, SHA], [40, SHA]]),
     r"frames\[1\]"),
    ("frame length a bool", _frames([[True, SHA]] * 4), r"frames\[0\]"),
    ("empty frame", _frames([[6000, SHA], [0, SHA], [0, SHA], [40, SHA]]),
     "frame 1 has 0 compressed bytes"),
    ("frame over zstd's bound", _frames([[1052705, SHA], [1, SHA], [1, SHA], [40, SHA]]),
     r"frame 0 has 1052705 compressed bytes, outside 1..1052704"),
    ("kernel elsewhere", _set("kernel", "stable/x86_64/2/vmlinuz"), "kernel"),
    ("initrd outside", _set("initrd", "../../etc/passwd"), "initrd"),
    ("path of another version", _top("path", "stable/x86_64/4/usr.img.zst"), "expected"),
    ("signed length zero", _top("length", 0), "signed length 0"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mutate", "message"), BAD_USR, ids=[b[0] for b in BAD_USR])
def test_bad_usr_metadata_is_refused_naming_the_field(
    name: str, mutate: Mutation, message: str
) -> None:
    doc = copy.deepcopy(usr_doc())
    mutate(doc)
    with pytest.raises(VerificationError, match=message) as info:
        release.parse_usr(signed(doc), "stable", "x86_64", parse_version("3"))
    assert "\n" not in info.value.message


def test_usr_target_needs_a_sha256() -> None:
    doc = usr_doc()
    target = SignedTarget(doc["path"], doc["length"], {"sha512": "00" * 64}, doc["custom"])
    with pytest.raises(VerificationError, match="no sha256 hash"):
        release.parse_usr(target, "stable", "x86_64", parse_version("3"))


def test_zstd_bound_lets_incompressible_frames_through() -> None:
    """zstd stores incompressible data in raw blocks: a frame of 1 MiB of random bytes takes
    1 MiB plus 3 bytes per 128 KiB block plus its header and checksum (measured with zstd
    levels 1 to 19: 1048609 or 1048610 bytes, 8202 for 8192 bytes; a checksum adds 4)."""
    doc = usr_doc()
    doc["custom"]["updater"]["frames"] = [[1048610, SHA]] * 3 + [[8206, SHA]]
    doc["length"] = 3 * 1048610 + 8206
    release.parse_usr(signed(doc), "stable", "x86_64", parse_version("3"))


# -------------------------------------------------------------------- kernel, initrd, release


def _lookup(docs: list[dict[str, Any]]) -> Callable[[str], SignedTarget | None]:
    by_path = {d["path"]: signed(d) for d in docs}
    return by_path.get


def test_a_release_is_read_from_its_three_targets() -> None:
    lookup = _lookup([usr_doc(), part_doc("kernel"), part_doc("initrd")])
    r = release.read_release("stable", "x86_64", parse_version("3"), lookup)
    assert r.kernel.path == "stable/x86_64/3/vmlinuz" and r.kernel.sha256 == SHA
    assert r.initrd is not None and r.initrd.length == 100
    doc = r.to_json()
    assert doc["version"] == "3" and doc["frames"] == 4 and doc["size"] == 3 * MiB + 8192


def test_release_without_initrd() -> None:
    usr = usr_doc()
    usr["custom"]["updater"]["initrd"] = None
    r = release.read_release(
        "stable", "x86_64", parse_version("3"), _lookup([usr, part_doc("kernel")])
    )
    assert r.initrd is None and r.to_json()["initrd"] is None


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([usr_doc(), part_doc("initrd")], "names stable/x86_64/3/vmlinuz, which no signed"),
        ([usr_doc(), part_doc("kernel")], "names stable/x86_64/3/initrd"),
        ([usr_doc(), part_doc("initrd", "3"), {**part_doc("kernel"), "custom": {
            "updater": {**part_doc("kernel")["custom"]["updater"], "version": "2"}}}],
         "version: '2', expected '3'"),
        ([usr_doc(), part_doc("kernel"), {**part_doc("initrd"), "custom": {
            "updater": {**part_doc("initrd")["custom"]["updater"], "kind": "kernel"}}}],
         "kind: 'kernel', expected 'initrd'"),
        ([usr_doc(), part_doc("initrd"), {**part_doc("kernel"), "length": 1 << 30}],
         "outside 1..268435456"),
    ],
)  # fmt: skip
def test_bad_kernel_or_initrd_is_refused(docs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        release.read_release("stable", "x86_64", parse_version("3"), _lookup(docs))


# ---------------------------------------------------------------------------------- the index


def index_bytes(**over: Any) -> bytes:
    doc = {"format": 1, "channel": "stable", "arch": "x86_64",
           "releases": [{"version": "2", "usr": "stable/x86_64/2/usr.img.zst"},
                        {"version": "10", "usr": "stable/x86_64/10/usr.img.zst"}]}  # fmt: skip
    doc.update(over)
    return json.dumps(doc).encode()


def test_index_lists_releases_oldest_first() -> None:
    entries = release.parse_index(index_bytes(), "stable", "x86_64")
    assert [str(e.version) for e in entries] == ["2", "10"]
    assert entries[1].usr == "stable/x86_64/10/usr.img.zst"


def test_rendered_index_reads_back() -> None:
    versions = [parse_version("10"), parse_version("2")]
    data = release.render_index("stable", "x86_64", versions)
    assert [e.version for e in release.parse_index(data, "stable", "x86_64")] == sorted(versions)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not JSON"),
        (b"[1]", "not an object"),
        (b"{" + b" " * (4 * MiB) + b"}", "more than"),
        (index_bytes(format=2), "format: 2"),
        (index_bytes(channel="beta"), "channel: 'beta'"),
        (index_bytes(arch="arm64"), "arch: 'arm64'"),
        (index_bytes(releases={}), "not a list"),
        (index_bytes(releases=[{"version": "2", "usr": "stable/x86_64/3/usr.img.zst"}]), "usr"),
        (index_bytes(releases=[{"version": "2", "usr": "../../x"}]), "usr"),
        (index_bytes(releases=[{"version": "02", "usr": "stable/x86_64/02/usr.img.zst"}]),
         "not a version"),
        (index_bytes(releases=[{"version": "2", "usr": "stable/x86_64/2/usr.img.zst"},
                               {"version": "2.0", "usr": "stable/x86_64/2.0/usr.img.zst"}]),
         "listed twice"),
        (index_bytes(releases=[{"version": "2", "usr": "stable/x86_64/2/usr.img.zst", "x": 1}]),
         "extra"),
        (index_bytes(extra=1), "extra"),
    ],
)  # fmt: skip
def test_bad_index_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        release.parse_index(data, "stable", "x86_64")


# --------------------------------------------------------------------------------- the choice


def make_release(version: str, arch: str = "x86_64") -> release.Release:
    usr, kernel = usr_doc(version, arch=arch), part_doc("kernel", version, arch=arch)
    usr["custom"]["updater"]["initrd"] = None
    return release.read_release("stable", arch, parse_version(version), _lookup([usr, kernel]))


OFFER = [make_release("1"), make_release("2"), make_release("3.1"), make_release("9", "arm64")]


def v(text: str) -> Version:
    return parse_version(text)


@pytest.mark.parametrize(
    ("booted", "pin", "allow", "chosen", "reason"),
    [
        ("2", None, False, "3.1", "newer than the booted 2"),
        (None, None, False, "3.1", "booted version is unknown"),
        ("3.1", None, False, None, "already running release 3.1"),
        ("3.1.0", None, False, None, "already running"),
        ("4", None, False, None, "newer than the newest release 3.1"),
        ("4", None, True, "3.1", "downgrade from 4 to 3.1"),
        ("1", "2", False, "2", "newer than the booted 1"),
        ("2", "2", False, None, "already running release 2"),
        ("3.1", "1", True, "1", "downgrade"),
    ],
)
def test_choice(
    booted: str | None, pin: str | None, allow: bool, chosen: str | None, reason: str
) -> None:
    choice = choose(
        OFFER, arch="x86_64", booted=v(booted) if booted else None,
        pin=v(pin) if pin else None, allow_downgrade=allow,
    )  # fmt: skip
    assert (str(choice.release.version) if choice.release else None) == chosen
    assert reason in choice.reason
    assert choice.downgrade == ("downgrade" in reason)


@pytest.mark.parametrize(
    ("offer", "booted", "pin", "message"),
    [
        (OFFER, "3.1", "1", "older than the booted 3.1: downgrade refused"),
        (OFFER, "1", "7", r"release 7 is not offered for x86_64 \(newest: 1, 2, 3.1\)"),
        (OFFER, "1", "9", "release 9 is for arm64, this machine is x86_64"),
        (OFFER[3:], "1", None, "releases only for arm64, this machine is x86_64"),
    ],
)
def test_refusals(offer: list[release.Release], booted: str, pin: str | None, message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        choose(offer, arch="x86_64", booted=v(booted), pin=v(pin) if pin else None)


def test_nothing_offered_is_nothing_to_do() -> None:
    assert choose([], arch="arm64", booted=v("1")).release is None
    with pytest.raises(ReleaseError, match="unknown architecture"):
        choose(OFFER, arch="riscv64", booted=v("1"))


# ------------------------------------------------------------------------------ rollout waves


def with_waves(value: Any) -> dict[str, Any]:
    doc = usr_doc()
    doc["custom"]["updater"]["waves"] = value
    return doc


def test_waves_are_optional_and_read_back() -> None:
    assert release.parse_usr(signed(usr_doc()), "stable", "x86_64", v("3")).waves == ()
    waves = [[100, "2030-01-01T02:00:00Z"], [2048, "2030-01-02T02:00:00+01:00"]]
    image = release.parse_usr(signed(with_waves(waves)), "stable", "x86_64", v("3"))
    assert image.waves == ((100, "2030-01-01T02:00:00Z"), (2048, "2030-01-02T02:00:00+01:00"))
    assert release.usr_custom(image)["updater"]["waves"] == waves


@pytest.mark.parametrize(
    "value",
    [[], "soon", [[0, "2030-01-01T02:00:00Z"]], [[2049, "2030-01-01T02:00:00Z"]],
     [[True, "2030-01-01T02:00:00Z"]], [[10, "2030-01-01"]], [[10, "tomorrow"]],
     [[10, "2030-01-01T02:00:00Z", 3]], [["10", "2030-01-01T02:00:00Z"]],
     [[10, "2030-01-01T02:00:00Z"]] * 65],
)  # fmt: skip
def test_bad_waves_are_refused(value: Any) -> None:
    with pytest.raises(VerificationError, match="waves"):
        release.parse_usr(signed(with_waves(value)), "stable", "x86_64", v("3"))


# ------------------------------------------------------------- documented shapes and exact limits


def test_release_json_is_the_documented_contract() -> None:
    """README, "JSON contracts": the shape of one release in ``releases --json``."""
    usr = with_waves([[100, "2030-01-01T02:00:00Z"]])
    r = release.read_release(
        "stable", "x86_64", v("3"), _lookup([usr, part_doc("kernel"), part_doc("initrd")])
    )
    assert r.to_json() == {
        "version": "3", "channel": "stable", "arch": "x86_64", "fs_type": "squashfs",
        "size": 3 * MiB + 8192,
        "usr": {"path": "stable/x86_64/3/usr.img.zst", "length": 6040, "sha256": SHA},
        "root_hash": "0f" * 32, "hash_offset": 3 * MiB - 24576, "frame_size": MiB, "frames": 4,
        "kernel": {"path": "stable/x86_64/3/vmlinuz", "length": 100},
        "initrd": {"path": "stable/x86_64/3/initrd", "length": 100},
        "waves": [[100, "2030-01-01T02:00:00Z"]],
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["kernel", "initrd"])
def test_part_metadata_is_the_documented_object(kind: str) -> None:
    """README, "The release format": the kernel's and initrd's custom metadata."""
    assert release.part_custom(kind, "stable", "x86_64", v("3")) == {
        "updater": {"format": 1, "kind": kind, "version": "3", "channel": "stable",
                    "arch": "x86_64"}
    }  # fmt: skip


def test_rendered_index_bytes() -> None:
    """Sorted keys, one-space indent, a final newline: the bytes a publisher signs."""
    data = release.render_index("stable", "x86_64", [v("2")])
    assert data == (
        b'{\n "arch": "x86_64",\n "channel": "stable",\n "format": 1,\n "releases": [\n'
        b'  {\n   "usr": "stable/x86_64/2/usr.img.zst",\n   "version": "2"\n  }\n ]\n}\n'
    )


def _usr_error(doc: dict[str, Any]) -> str:
    with pytest.raises(VerificationError) as info:
        release.parse_usr(signed(doc), "stable", "x86_64", v("3"))
    return info.value.message


META = "target stable/x86_64/3/usr.img.zst: custom metadata"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("size", 4096), f"{META} size: 4096 is not a whole number in 8192..{64 << 30}"),
        (_set("size", "5"), f"{META} size: '5' is not a whole number in 8192..{64 << 30}"),
        (_set("fs_type", "ext4"), f"{META} fs_type: 'ext4' is not one of squashfs, erofs"),
        (_set("frames", "ab"), f"{META} frames: not a list of frames"),
        (_set("frames", [5]), f"{META} frames[0]: not [compressed length, sha256 hex]"),
        (_set("frames", [[1000, SHA, 1]]),
         f"{META} frames[0]: not [compressed length, sha256 hex]"),
        (_verity("hash_offset", 3 * MiB + 8192),
         f"{META} verity hash_offset: {3 * MiB + 8192} is not a whole number in "
         f"4096..{3 * MiB + 8191}"),
        (_verity("hash_offset", 3 * MiB),
         f"{META} verity hash_offset: a tree for {3 * MiB} bytes of data needs 32768 bytes "
         "after it, the image has 8192"),
        (_set("verity", []), f"{META} verity is list, not an object"),
        (_set("kind", "kernel"), f"{META} kind: 'kernel', expected 'usr'"),
    ],
)  # fmt: skip
def test_usr_refusal_texts(mutate: Mutation, message: str) -> None:
    doc = usr_doc()
    mutate(doc)
    assert _usr_error(doc) == message


def test_usr_fields_refusal_names_missing_and_extra() -> None:
    doc = usr_doc()
    del doc["custom"]["updater"]["size"]
    doc["custom"]["updater"]["x"] = 1
    assert _usr_error(doc) == f"{META} fields differ from format 1: missing ['size'], extra ['x']"


def test_the_largest_frame_size_is_allowed() -> None:
    doc = usr_doc()
    doc["custom"]["updater"].update(frame_size=1 << 30, frames=[[6040, SHA]])
    image = release.parse_usr(signed(doc), "stable", "x86_64", v("3"))
    assert image.frames.frame_size == 1 << 30


@pytest.mark.parametrize(
    ("kind", "length"),
    [("kernel", 1), ("kernel", 256 * MiB), ("initrd", 512 * MiB), ("initrd", 1 << 30)],
)
def test_kernel_and_initrd_lengths_up_to_their_limits(kind: str, length: int) -> None:
    part = part_doc(kind)
    part["length"] = length
    other = part_doc("initrd" if kind == "kernel" else "kernel")
    r = release.read_release("stable", "x86_64", v("3"), _lookup([usr_doc(), part, other]))
    target = r.kernel if kind == "kernel" else r.initrd
    assert target is not None and target.length == length


def test_part_refusal_text() -> None:
    bad = part_doc("kernel")
    bad["custom"]["updater"]["arch"] = "arm64"
    with pytest.raises(VerificationError) as info:
        docs = [usr_doc(), bad, part_doc("initrd")]
        release.read_release("stable", "x86_64", v("3"), _lookup(docs))
    assert info.value.message == (
        "target stable/x86_64/3/vmlinuz: custom metadata arch: 'arm64', expected 'x86_64'"
    )


@pytest.mark.parametrize("count", [1, 64])
def test_one_to_64_waves(count: int) -> None:
    waves = [[1, "2030-01-01T02:00:00Z"]] * count
    image = release.parse_usr(signed(with_waves(waves)), "stable", "x86_64", v("3"))
    assert len(image.waves) == count and image.waves[0][0] == 1


def _index_error(data: bytes) -> str:
    with pytest.raises(VerificationError) as info:
        release.parse_index(data, "stable", "x86_64")
    return info.value.message


def test_index_refusal_texts() -> None:
    where = "index stable/x86_64/index.json:"
    assert _index_error(index_bytes(format=2)) == f"{where} format: 2, expected 1"
    bad = index_bytes(releases=[{"version": "2", "usr": "x"}])
    assert _index_error(bad) == (
        f"{where} release 0 usr: 'x', expected 'stable/x86_64/2/usr.img.zst'"
    )


def test_index_limits_themselves_are_allowed() -> None:
    listed = [{"version": str(i), "usr": f"stable/x86_64/{i}/usr.img.zst"} for i in range(10000)]
    data = index_bytes(releases=listed)
    assert len(release.parse_index(data, "stable", "x86_64")) == 10000
    small = index_bytes()
    padded = small[:-1] + b" " * (4 * MiB - len(small)) + b"}"
    assert len(padded) == 4 * MiB
    assert len(release.parse_index(padded, "stable", "x86_64")) == 2


def _choose_error(offer: list[release.Release], arch: str, pin: str | None) -> ReleaseError:
    with pytest.raises(ReleaseError) as info:
        choose(offer, arch=arch, booted=v("1"), pin=v(pin) if pin else None)
    return info.value


def test_choice_refusal_texts() -> None:
    assert _choose_error(OFFER, "riscv64", None).message == (
        "unknown architecture 'riscv64' (known: x86_64, arm64)"
    )
    both = [make_release("9", "arm64"), make_release("9", "aarch64")]
    assert _choose_error(both, "x86_64", "9").message == (
        "release 9 is for aarch64, arm64, this machine is x86_64"
    )
    assert _choose_error(both, "x86_64", None).message == (
        "the channel has releases only for aarch64, arm64, this machine is x86_64"
    )
    assert _choose_error([], "x86_64", "7").message == (
        "release 7 is not offered for x86_64 (newest: none)"
    )
    six = [make_release(str(n)) for n in range(2, 8)]
    assert _choose_error(six, "x86_64", "9").message == (
        "release 9 is not offered for x86_64 (newest: 3, 4, 5, 6, 7)"
    )
    with pytest.raises(ReleaseError) as info:
        choose(OFFER, arch="x86_64", booted=v("3.1"), pin=v("1"))
    assert info.value.message == "release 1 is older than the booted 3.1: downgrade refused"
    assert info.value.hint == "pass --allow-downgrade to install it anyway"


def test_choice_reasons_in_full() -> None:
    assert choose([], arch="arm64", booted=v("1")).reason == (
        "the channel offers no release for arm64"
    )
    assert choose(OFFER, arch="x86_64", booted=v("4")).reason == (
        "the booted 4 is newer than the newest release 3.1 (--allow-downgrade takes it)"
    )

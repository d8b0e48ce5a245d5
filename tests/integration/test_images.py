"""The built test disk and payloads (images/build.py), checked with the real tools.

The first run builds everything (minutes: mmdebstrap, dracut, squashfs); later runs reuse the
content-hashed cache and take seconds. Needs root and the image tools; skips name the missing one.
Also compares updater.grubenv's block byte for byte with grub-editenv's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from updater import __version__, grubenv

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from images import build  # noqa: E402

SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
TOOLS = {
    **build.HOST_TOOLS,
    "cgpt": "cgpt",
    "unsquashfs": "squashfs-tools",
    "mdir": "mtools",
    "grub-editenv": "grub-common",
}


def missing_tool() -> str | None:
    for tool, package in TOOLS.items():
        if shutil.which(tool, path=SBIN_PATH) is None:
            return f"{tool} not found (Debian package {package})"
    if not (build.GRUB_EFI_DIR / "linux.mod").is_file():
        return f"{build.GRUB_EFI_DIR} missing (Debian package grub-efi-amd64-bin)"
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap --mode=root, chroot)"
    return None


pytestmark = [pytest.mark.integration]


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    full = dict(os.environ, PATH=SBIN_PATH, LANG="C.UTF-8", **(env or {}))
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        env=full,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def built() -> build.BuildResult:
    reason = missing_tool()
    if reason:
        pytest.skip(reason)
    return build.build_all()


@pytest.fixture(scope="module")
def offsets(built: build.BuildResult) -> dict[int, tuple[int, int]]:
    return build.partition_offsets(built.disk)


def manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_cached_build_is_found_again_unchanged(built: build.BuildResult) -> None:
    """The key of the inputs names the directory the build went into, and a second build finds
    it there: the same result, and not one file written again (a rebuild would publish a new
    directory, with new files)."""
    assert build.build_key(build.VERSIONS) == built.directory.name
    files = sorted(p for p in built.directory.rglob("*") if p.is_file())
    before = [(p, p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    again = build.build_all()
    assert again == built
    assert [(p, p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before


def test_gpt_layout_and_slot_attributes(built: build.BuildResult) -> None:
    table = sh("sgdisk", "--print", built.disk)
    for label in ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "OEM-CONFIG", "ROOT"):
        assert label in table
    assert "0101000000000000" in sh("sgdisk", "--info=3", built.disk)
    for number, expected in ((3, ("1", "0", "1")), (4, ("0", "0", "0"))):
        got = tuple(
            sh("cgpt", "show", "-i", str(number), flag, built.disk).strip()
            for flag in ("-P", "-T", "-S")
        )
        assert got == expected, f"partition {number}"


def test_manifests(built: build.BuildResult) -> None:
    for version, path, usr in ((1, built.manifest_v1, built.usr_v1), (2, built.manifest_v2,
                                                                     built.usr_v2)):  # fmt: skip
        m = manifest(path)
        assert m["version"] == version
        assert m["fs_type"] == "squashfs"
        assert m["salt"] == ""
        assert m["hash_offset"] == -(-int(str(m["fs_size"])) // 4096) * 4096
        assert m["data_blocks"] == int(str(m["hash_offset"])) // 4096
        assert m["size"] == usr.stat().st_size
        # What the initrd computes: squashfs bytes_used rounded up to 4096.
        with usr.open("rb") as f:
            used = int.from_bytes(f.read(48)[40:48], "little")
        assert m["hash_offset"] == -(-used // 4096) * 4096
    assert manifest(built.manifest_v1)["root_hash"] != manifest(built.manifest_v2)["root_hash"]


def test_usr_a_verifies_against_manifest(
    built: build.BuildResult, offsets: dict[int, tuple[int, int]], tmp_path: Path
) -> None:
    m = manifest(built.manifest_v1)
    start, size = offsets[3]
    part = tmp_path / "usr-a.img"
    with built.disk.open("rb") as f:
        f.seek(start)
        part.write_bytes(f.read(int(str(m["size"]))))
    assert part.read_bytes() == built.usr_v1.read_bytes()
    sh(
        "veritysetup",
        "verify",
        part,
        part,
        str(m["root_hash"]),
        f"--hash-offset={m['hash_offset']}",
    )
    # USR-B holds nothing yet.
    with built.disk.open("rb") as f:
        f.seek(offsets[4][0])
        assert f.read(1 << 20) == bytes(1 << 20)


def test_usr_v2_verifies(built: build.BuildResult) -> None:
    m = manifest(built.manifest_v2)
    sh("veritysetup", "verify", built.usr_v2, built.usr_v2, str(m["root_hash"]),
       f"--hash-offset={m['hash_offset']}")  # fmt: skip


def test_kernels_carry_root_hash_at_0x40(built: build.BuildResult) -> None:
    for kernel, path in ((built.kernel_v1, built.manifest_v1), (built.kernel_v2,
                                                               built.manifest_v2)):  # fmt: skip
        data = kernel.read_bytes()
        assert data[0x40:0x80].decode() == manifest(path)["root_hash"]
        assert data[:2] == b"MZ"  # still an EFI-stub kernel


@pytest.mark.parametrize("version", [1, 2])
def test_squashfs_os_release(built: build.BuildResult, version: int) -> None:
    usr = built.usr_v1 if version == 1 else built.usr_v2
    text = sh("unsquashfs", "-cat", usr, "lib/os-release")
    assert f"VERSION_ID={version}\n" in text
    listing = sh("unsquashfs", "-l", usr, "bin/updater", "lib/python3/dist-packages/updater")
    assert "squashfs-root/bin/updater" in listing
    assert "dist-packages/updater/slots.py" in listing


def test_entry_script_runs_the_cli_without_a_shell(
    built: build.BuildResult, tmp_path: Path
) -> None:
    """/usr/bin/updater is run by the interpreter itself (no shell, no module runner): the very
    script from the image, run with the project on the path, answers as the CLI does."""
    script = tmp_path / "updater"
    script.write_text(sh("unsquashfs", "-cat", built.usr_v1, "bin/updater"))
    assert script.read_text().startswith("#!/usr/bin/python3\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script), "--version"], capture_output=True,
                         text=True, env=env, check=True).stdout  # fmt: skip
    assert out == f"updater {__version__}\n"
    bad = subprocess.run([sys.executable, str(script), "no-such-command"], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_esp_contents_and_grubenv(
    built: build.BuildResult, offsets: dict[int, tuple[int, int]], tmp_path: Path
) -> None:
    image = f"{built.disk}@@{offsets[1][0]}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    listing = sh("mdir", "-i", image, "-b", "-/", "::/", env=env)
    for name in (
        "/EFI/BOOT/BOOTX64.EFI",
        "/EFI/BOOT/grub.cfg",
        "/flatcar/vmlinuz-a",
        "/flatcar/initrd-a",
        "/flatcar/grubenv",
        "/flatcar/first_boot",
    ):
        assert f"::{name}" in listing, listing
    out = tmp_path / "grubenv"
    sh("mcopy", "-i", image, "::/flatcar/grubenv", out, env=env)
    kernel = tmp_path / "vmlinuz-a"
    sh("mcopy", "-i", image, "::/flatcar/vmlinuz-a", kernel, env=env)
    assert kernel.read_bytes() == built.kernel_v1.read_bytes()
    block = out.read_bytes()
    assert len(block) == 1024
    listed = dict(
        line.split("=", 1) for line in sh("grub-editenv", out, "list").splitlines() if line
    )
    assert listed == grubenv.parse(block)
    assert listed["usr_a_hash"] == manifest(built.manifest_v1)["root_hash"]
    assert listed["usr_a_priority"] == "1" and listed["usr_a_successful"] == "1"
    assert listed["usr_b_priority"] == "0" and listed["usr_b_hash"] == ""
    assert listed["usr_sync"] == "3:0101000000000000,4:0000000000000000"


def test_render_matches_grub_editenv(tmp_path: Path) -> None:
    if shutil.which("grub-editenv") is None:
        pytest.skip("grub-editenv not found (Debian package grub-common)")
    path = tmp_path / "env"
    sh("grub-editenv", path, "create")
    assert path.read_bytes() == grubenv.render({})
    values = {"usr_a_priority": "1", "usr_a_hash": "ab" * 32, "usr_sync": "3:0101000000000000"}
    sh("grub-editenv", path, "set", *(f"{k}={v}" for k, v in values.items()))
    assert path.read_bytes() == grubenv.render(values)
    # And GRUB's reader agrees with ours on a block we rendered.
    path.write_bytes(grubenv.render(values))
    assert sh("grub-editenv", path, "list").splitlines() == [f"{k}={v}" for k, v in values.items()]


def test_installer_assets_in_usr_and_the_network_boot_initramfs(
    built: build.BuildResult, tmp_path: Path
) -> None:
    """Every version carries what `updater install` needs (GRUB as on the test disk's ESP, ROOT,
    the OEM settings, pyparted); the installer's initramfs is a gzip cpio with a static busybox
    /init, its two modules and the installer's units, then an uncompressed cpio holding
    version 1's USR image byte for byte."""
    listing = sh("unsquashfs", "-l", built.usr_v1)
    for rel in ("share/updater/install/grub/BOOTX64.EFI", "share/updater/install/grub/grub.cfg",
                "share/updater/install/root/etc/hostname",
                "share/updater/install/oem/qemu/grub.cfg", "lib/python3/dist-packages/parted"):
        assert f"squashfs-root/{rel}\n" in listing, rel
    data = built.installer_initrd.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    inflater = zlib.decompressobj(wbits=31)
    first = inflater.decompress(data)
    rest = inflater.unused_data.lstrip(b"\0")
    members = sh_input(["cpio", "-itv", "--quiet"], first)
    for name in ("init", "installer/busybox", "installer/modules/loop.ko",
                 "installer/modules/squashfs.ko", "etc/systemd/system/updater-installer.service",
                 "etc/systemd/network/50-dhcp.network"):
        assert f" {name}\n" in members, name
    lines = members.splitlines()
    assert next(line for line in lines if line.endswith(" dev/console")).startswith("crw-------")
    assert not [line for line in lines if line.endswith("updater-ready.service")]
    out = tmp_path / "second"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=rest, cwd=out, check=True)
    assert (out / "installer/usr.img").read_bytes() == built.usr_v1.read_bytes()
    assert built.installer_kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage


def sh_input(argv: list[str], data: bytes) -> str:
    proc = subprocess.run(argv, input=data, capture_output=True, check=True)
    return proc.stdout.decode()


def test_python_bytecode_in_usr_is_hash_based(built: build.BuildResult, tmp_path: Path) -> None:
    """/usr is read-only and its squashfs pins every timestamp to 0, so a timestamp-based .pyc
    (PEP 552 flags 0) no longer matches its source and Python compiles the source again on every
    import, under emulation seconds per `updater` call. Every .pyc of the interpreter's library
    and of the updater must be hash-based and unchecked (flags 0b01), and the modules every
    command imports must have one."""
    out = tmp_path / "usr"
    sh("unsquashfs", "-no-progress", "-d", out, built.usr_v1, "lib/python3.11",
       "lib/python3/dist-packages/updater")  # fmt: skip
    pycs = sorted(out.rglob("__pycache__/*.cpython-311.pyc"))
    assert len(pycs) > 500, f"only {len(pycs)} .pyc files in the image's Python library"
    stale = [p.relative_to(out) for p in pycs if p.read_bytes()[4:8] != b"\x01\x00\x00\x00"]
    assert not stale, f"{len(stale)} .pyc files that are not unchecked-hash: {stale[:5]}"
    for rel in ("lib/python3.11/argparse.py", "lib/python3.11/typing.py",
                "lib/python3.11/dataclasses.py", "lib/python3.11/inspect.py",
                "lib/python3.11/json/decoder.py", "lib/python3/dist-packages/updater/cli.py",
                "lib/python3/dist-packages/updater/slots.py"):  # fmt: skip
        source = out / rel
        assert source.is_file(), rel
        assert (source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc").is_file(), rel

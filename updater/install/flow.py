"""The install, in order. Nothing is written until every input has been checked; the partition
table is the last thing written, so a disk cut off at any point before it has no partition
table and boots nothing.

1. check, writing nothing: the disk (``probe`` and ``plan.refusal``), the assets (GRUB, ROOT,
   OEM), the release (TUF: signatures, expiry, rollback; then ``release.choose``), the
   placement of the partitions (libparted) and that the image fits its slot; then the operator
   confirms (``--yes``, or a question on a terminal);
2. clear: the first MiB (the protective MBR, made durable on its own), the last MiB, and both
   ends of every new partition; the kernel forgets the old partitions;
3. format, at the partitions' offsets: the ESP (FAT), OEM (ext4, with the OEM files) and ROOT
   (ext4, from the assets' ``root/``);
4. slots: ``updater.deploy`` streams the release into USR-A (and USR-B with ``both_slots``),
   reads each slot back against the signed root hash, and puts the slot's kernel and initrd
   on the ESP, as ``updater update`` does;
5. boot files: ``grub.cfg``, the grubenv rendered from the new table, the first-boot marker,
   and GRUB itself (``bootfiles``); everything is made durable;
6. the partition table (``updater.gptcreate``: entries, headers, the protective MBR last), with
   USR-A at priority 1, tries 0, successful: the install's commit point; the kernel reads it;
7. verify (``verify``): the table, the slot rules' choice and every file, read back.

A failure after step 6 erases the protective MBR again ("wiped again"): a disk that failed its
verification is never left bootable. A failure before writes nothing more. What comes after the
install (kexec, reboot, power off) is the command's business.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from updater import deploy, release
from updater.errors import ReleaseError, UpdaterError
from updater.install import assets as install_assets
from updater.install import bootfiles, events, media, partition, plan, probe, verify
from updater.install.plan import DiskFacts, DiskPlan
from updater.log import log
from updater.records import dataclass
from updater.release import Release
from updater.slotwrite import Region

if TYPE_CHECKING:
    from updater.bootfs import BootFiles
    from updater.fetch.client import ReleaseClient


@dataclass(frozen=True)
class Request:
    disk: str
    repo: str | None  # an http(s) URL or a directory holding a copy of the repository
    image: str | None  # or a tar archive of such a copy (``updater.fetch.archive``)
    channel: str
    version: str | None
    arch: str
    trusted_root: str
    assets: str
    oem_id: str | None = None
    oem_dir: str | None = None
    both_slots: bool = False
    wipe: bool = False
    timeout: float = 30.0
    retries: int = 4
    panic: int = 10  # [boot] panic, for the grubenv GRUB reads

    @property
    def source(self) -> str:
        return self.image or self.repo or ""

    @property
    def letters(self) -> tuple[str, ...]:
        return ("A", "B") if self.both_slots else ("A",)


Report = Callable[[events.Event], None]
Confirm = Callable[[DiskFacts, Release], bool]


class NotConfirmed(UpdaterError):
    """The operator did not confirm erasing the disk."""


def install(req: Request, report: Report, confirm: Confirm) -> events.Installed:
    started = time.monotonic()
    layout = plan.install_layout()
    facts = probe.disk_facts(req.disk)
    refused = plan.refusal(facts, layout.size, wipe=req.wipe)
    if refused is not None:
        raise refused
    files = install_assets.load(req.assets, req.arch, req.oem_id, req.oem_dir)
    with tempfile.TemporaryDirectory(prefix="updater-install.") as state_dir:
        client = _client(req, state_dir)
        rel = _choose(client, req)
        where = partition.place(req.disk, layout)
        for letter in req.letters:
            room = where.region(f"USR-{letter}").size
            if rel.image.size > room:
                raise ReleaseError(
                    f"release {rel.version} needs {rel.image.size} bytes, USR-{letter} holds {room}"
                )
        report(events.Installing(facts, str(rel.version), req.channel, req.source, req.letters))
        if not confirm(facts, rel):
            raise NotConfirmed(f"{req.disk} was not erased", hint="nothing was written")
        _write(req, Writing(where, files, client, rel, state_dir, report))
    return events.Installed(req.disk, str(rel.version), where.slots(),
                            time.monotonic() - started)  # fmt: skip


def _client(req: Request, state_dir: str) -> ReleaseClient:
    # Imported here: only an install that fetches loads python-tuf and requests.
    from updater.fetch import client as tuf
    from updater.fetch.http import HttpPolicy

    where = (
        tuf.archive_endpoint(req.image) if req.image
        else tuf.endpoint(req.repo or "", HttpPolicy(timeout=req.timeout, retries=req.retries))
    )  # fmt: skip
    # A metadata cache of its own: an install trusts the shipped root and the source it is
    # given, not what this machine's own updates cached from their repository.
    found = tuf.ReleaseClient(
        where, Path(state_dir, "metadata"), tuf.read_trusted_root(req.trusted_root)
    )
    found.refresh()
    return found


def _choose(client: ReleaseClient, req: Request) -> Release:
    from updater.fetch.client import offered

    pin = release.parse_version(req.version) if req.version else None
    found = offered(client.releases, req.channel, req.arch, pin)
    choice = release.choose(found, arch=req.arch, booted=None, pin=pin)
    if choice.release is None:
        raise ReleaseError(f"nothing to install: {choice.reason}")
    return choice.release


@dataclass(frozen=True)
class Writing:
    """Everything the writing steps need, resolved by the checks."""

    where: DiskPlan
    files: install_assets.Assets
    client: ReleaseClient
    rel: Release
    state_dir: str
    report: Report


def _write(req: Request, w: Writing) -> None:
    disk, where, report = req.disk, w.where, w.report
    step = "clear"
    table_written = False
    try:
        report(events.Step("clear", detail="old partition tables and signatures"))
        media.clear(disk, where.clear())
        media.reread(disk)
        step = "format"
        report(events.Step("format", detail="ESP (FAT), OEM and ROOT (ext4)"))
        esp = media.make_fat(disk, where.region("EFI-SYSTEM"), where.sector_size, "EFI-SYSTEM")
        oem = dict(w.files.oem.files) if w.files.oem else {}
        media.make_ext4_from_files(disk, where.region("OEM"), "OEM", oem.items())
        media.make_ext4(disk, where.region("ROOT"), "ROOT", w.files.root)
        written: dict[str, bytes] = {}
        hashes: dict[str, str] = {}
        for letter in req.letters:
            step = "slot"
            report(events.Step("slot", letter, f"release {w.rel.version}"))
            done = _deploy(disk, w, letter, esp, req.arch)
            hashes[letter] = done.root_hash
            written.update({name: esp.read(name) or b"" for name in done.boot_files})
        step = "boot-files"
        report(events.Step("boot-files", detail="GRUB, grub.cfg, grubenv, first-boot marker"))
        boot = bootfiles.fresh_esp(w.files.boot_loader_name, w.files.boot_loader,
                                   w.files.grub_cfg, where.slots(), hashes,
                                   req.panic)  # fmt: skip
        for name, data in boot.items():
            esp.write(name, data)
        written.update(boot)
        media.sync(disk)
        step = "partition-table"
        report(events.Step("partition-table", detail="USR-A: priority 1, tries 0, successful"))
        table_written = True
        media.write_table(disk, where.table())
        media.reread(disk)
        step = "verify"
        report(events.Step("verify", detail="partition table, slot choice, files"))
        verify.check(disk, where, written, oem)
    except BaseException as exc:
        if table_written:
            _unbootable(disk)
        if isinstance(exc, UpdaterError):
            report(events.Failed(exc.message, step, disk_changed=True, exit=exc.exit_code))
        raise


def _deploy(disk: str, w: Writing, letter: str, esp: BootFiles, arch: str) -> deploy.Deployed:
    spec = w.where.layout.partition(f"USR-{letter}")
    r = w.where.region(spec.label)
    # No partition node yet: the slot is a byte range of the whole disk (or image file).
    dest = deploy.SlotDestination(letter, Region(disk, r.offset, r.size, str(spec.partuuid)), None)
    return deploy.deploy(
        w.client, w.rel, dest, esp, state_dir=str(Path(w.state_dir, "slots")), arch=arch,
        progress=lambda phase, done, total: w.report(events.Progress(letter, phase, done, total)),
    )  # fmt: skip


def _unbootable(disk: str) -> None:
    """Erase the protective MBR (and the first MiB with it) again. Best effort: the failure that
    brought us here is the one to report; this one is only logged."""
    try:
        media.clear(disk, (plan.Region(0, plan.CLEAR),))
        media.reread(disk)
    except UpdaterError as exc:
        log(f"could not erase the new partition table of {disk} again: {exc.message}")

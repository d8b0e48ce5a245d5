"""Boot a disk or a kernel under QEMU (TCG) and talk to the guest over its serial console.

A ``Machine`` owns one working directory: a copy-on-write qcow2 overlay over a raw base disk (the
base is never written), a private copy of the firmware variables, and one console log per QEMU run.
It can start QEMU, wait for console markers, run shell commands in the guest, reset, power off,
kill QEMU hard and start it again on the same overlay, so the disk state carries over.

It does not build images, log in (the images autologin root on ttyS0), or decide what a test
asserts. QEMU always runs with TCG, and without a network device unless the test gives the
machine forwards or a network boot: then QEMU's user network with ``restrict=on``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"

_TAIL_LINES = 40


class VmError(AssertionError):
    """A VM did not do what the test waited for; the message carries the console tail."""


@dataclass(frozen=True)
class Firmware:
    """UEFI boot: read-only firmware code, and a template the machine copies for its variables."""

    code: Path = OVMF_CODE
    vars_template: Path = OVMF_VARS


@dataclass(frozen=True)
class DirectKernel:
    """Direct kernel boot: QEMU loads the kernel and initrd itself, no firmware boot menu."""

    kernel: Path
    initrd: Path | None = None
    append: str = "console=ttyS0"


@dataclass(frozen=True)
class Forward:
    """A guest TCP address that reaches a port on the host's loopback (QEMU ``guestfwd``).

    The guest connects to ``guest_addr:guest_port`` (inside QEMU's user network 10.0.2.0/24, where
    the test image has address 10.0.2.15); each connection runs ``socat`` to the host's
    127.0.0.1:``host_port``.
    QEMU's chardev form of guestfwd opens one connection at start-up and serves only that one, so
    the per-connection command form is used."""

    host_port: int
    guest_port: int = 80
    guest_addr: str = "10.0.2.100"

    def netdev_option(self) -> str:
        return (f"guestfwd=tcp:{self.guest_addr}:{self.guest_port}-"
                f"cmd:socat STDIO TCP:127.0.0.1:{self.host_port}")  # fmt: skip


@dataclass(frozen=True)
class NetBoot:
    """Network boot from QEMU's user network: its DHCP server names ``bootfile`` and its TFTP
    server (10.0.2.2) serves ``tftp``. The NIC's option ROM (iPXE, from Debian's ipxe-qemu)
    loads it when the firmware gets to the NIC: after the disk, which comes first."""

    tftp: Path
    bootfile: str

    def netdev_option(self) -> str:
        return f"tftp={self.tftp.resolve()},bootfile={self.bootfile}"


@dataclass(frozen=True)
class VmConfig:
    boot: Firmware | DirectKernel
    disk: Path | None = None  # raw base image; the machine boots a qcow2 overlay over it
    memory_mib: int = 1024
    cpus: int = 2
    disk_interface: str = "virtio-blk-pci"
    # Read-only raw images attached as more virtio disks, in order (/dev/vdb, /dev/vdc, ...), each
    # with serial "extraN" (/dev/disk/by-id/virtio-extra1, ...): payloads for a guest that has
    # no network.
    extra_disks: tuple[Path, ...] = ()
    # Restricted user networking (no route to the host or anywhere else) with only these
    # forwards to the host's loopback; no network device at all when empty.
    forwards: tuple[Forward, ...] = ()
    net_boot: NetBoot | None = None
    # A disk that starts out blank (a qcow2 of this many bytes, holes only) instead of ``disk``.
    blank_disk: int | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str

    def check(self) -> CommandResult:
        if self.status != 0:
            raise VmError(f"guest command {self.command!r} exited {self.status}:\n{self.output}")
        return self


def qemu_img_overlay(base: Path, overlay: Path) -> None:
    """Create a qcow2 overlay whose reads fall through to the raw ``base`` and whose writes stay."""
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(base.resolve()),
            str(overlay),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def qemu_img_blank(path: Path, size: int) -> None:
    """A qcow2 disk of ``size`` bytes that reads as zeros everywhere."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def sparse_copy(src: Path, dst: Path) -> Path:
    """A private raw copy that tests may patch; disk images are mostly holes, so keep them."""
    subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return dst


def to_raw(image: Path, dst: Path) -> Path:
    """Flatten an overlay (and its base) into a raw file, to inspect the disk a guest left."""
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(image), str(dst)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return dst


GRUB_BANNER = "Welcome to GRUB!"
RESTARTING = "reboot: Restarting system"  # the kernel's last line before a warm reset
GRUB_STALL_SECONDS = 150.0
_BLANK = re.compile(r"(?:\s|\x1b\[[0-9;=?]*[A-Za-z])*")


def grub_stalled(text: str, since: int, idle: float) -> bool:
    """Whether a warm reset stalled: GRUB's banner, or the kernel's "Restarting system" line,
    was printed at or after ``since`` and then nothing but blank space and terminal codes for
    ``GRUB_STALL_SECONDS``. Seen in CI with two emulated machines on two cores: once GRUB
    stopped right after its banner for 420 s, once the firmware printed nothing at all for
    420 s after the kernel reset the machine (it normally prints its boot line within a
    second); the same disk state, started again, boots (the menu has no loop; it echoes a line
    before it reads the kernel). A menu that fails prints its UPDATER-BOOT-FAILED line, so it
    never counts as a stall, and one press of reset per wait means a stall that repeats still
    fails the test."""
    if idle < GRUB_STALL_SECONDS:
        return False
    marker = max((GRUB_BANNER, RESTARTING), key=text.rfind)
    at = text.rfind(marker)
    if at < 0 or at < since:
        return False
    return _BLANK.fullmatch(text, at + len(marker)) is not None


class Console:
    """The serial console of one QEMU run: a reader thread appends everything to a log file and
    to an in-memory buffer that ``wait_for`` searches. Positions are character offsets into
    ``text`` so a caller can wait for something that appears *after* a point it recorded."""

    def __init__(self, sock: socket.socket, log_path: Path) -> None:
        self._sock = sock
        self.log_path = log_path
        self._chunks: list[str] = []
        self._text = ""
        self._cond = threading.Condition()
        self._closed = False
        self.last_output = time.monotonic()  # when the guest last printed anything
        self._log = log_path.open("wb")
        self._thread = threading.Thread(target=self._read, name=f"console {log_path}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._log.write(data)
                self._log.flush()
                # Firmware and kernels print control bytes and the odd invalid byte; keep going.
                with self._cond:
                    self._text += data.decode("utf-8", errors="replace")
                    self.last_output = time.monotonic()
                    self._cond.notify_all()
        finally:
            self._log.close()
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def position(self) -> int:
        with self._cond:
            return len(self._text)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def tail(self, lines: int = _TAIL_LINES) -> str:
        return "\n".join(self.text.replace("\r", "").splitlines()[-lines:])

    def write(self, data: str) -> None:
        self._sock.sendall(data.encode())

    def wait_for(
        self,
        pattern: str,
        timeout: float,
        since: int = 0,
        watchdog: Callable[[str, float], None] | None = None,
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a regex, multiline) appears at or after ``since``. While
        waiting, ``watchdog`` (if given) is called about once a second with the text so far and
        the seconds since the guest last printed anything."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self._text, since)
                if found:
                    return found
                if watchdog is not None:
                    watchdog(self._text, time.monotonic() - self.last_output)
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = f"timed out after {timeout:.0f} s"
                    break
                if self._closed:
                    reason = "the console closed (QEMU exited)"
                    break
                self._cond.wait(min(left, 1.0))
        raise VmError(
            f"{reason} waiting for /{pattern}/ on the serial console\n"
            f"console log: {self.log_path}\n--- last {_TAIL_LINES} lines ---\n{self.tail()}"
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


class Qmp:
    """The minimum of the QEMU Machine Protocol: one command at a time, events skipped."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._read_reply("QMP")  # greeting
        self.execute("qmp_capabilities")

    def _read_reply(self, key: str) -> dict[str, Any]:
        while True:
            line = self._file.readline()
            if not line:
                raise VmError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if key in message:
                return message
            if "error" in message:
                raise VmError(f"QMP error: {message['error']}")

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        return self._read_reply("return")["return"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _connect_unix(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_marker_ids = itertools.count(1)


@dataclass
class Machine:
    """One virtual machine and its disk state. Use as a context manager: QEMU never outlives it."""

    config: VmConfig
    workdir: Path
    runs: list[Path] = field(default_factory=list)  # console log of each QEMU run, in order
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _console: Console | None = field(default=None, init=False, repr=False)
    _qmp: Qmp | None = field(default=None, init=False, repr=False)
    _stderr: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.overlay: Path | None = None
        if self.config.disk is not None:
            self.overlay = self.workdir / "disk.qcow2"
            qemu_img_overlay(self.config.disk, self.overlay)
        elif self.config.blank_disk is not None:
            self.overlay = self.workdir / "disk.qcow2"
            qemu_img_blank(self.overlay, self.config.blank_disk)
        self.vars: Path | None = None
        if isinstance(self.config.boot, Firmware):
            self.vars = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(self.config.boot.vars_template, self.vars)

    # -- life cycle --------------------------------------------------------------------------

    def argv(self, serial: Path, qmp: Path) -> list[str]:
        c = self.config
        args = [
            QEMU, "-accel", "tcg", "-machine", "q35",
            "-m", str(c.memory_mib), "-smp", str(c.cpus),
            "-nodefaults", "-display", "none",
            "-chardev", f"socket,id=serial0,path={serial},server=on,wait=off",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            # Start paused: the console reader connects first, so no early byte is lost.
            "-S",
        ]  # fmt: skip
        if isinstance(c.boot, Firmware):
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={c.boot.code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            ]  # fmt: skip
        else:
            args += ["-kernel", str(c.boot.kernel), "-append", c.boot.append]
            if c.boot.initrd is not None:
                args += ["-initrd", str(c.boot.initrd)]
        if self.overlay is not None:
            # Direct kernel boot claims boot index 0 itself; firmware boots from the disk.
            boot_index = ",bootindex=0" if isinstance(c.boot, Firmware) else ""
            args += [
                "-drive", f"if=none,id=disk0,format=qcow2,file={self.overlay}",
                "-device", f"{c.disk_interface},drive=disk0{boot_index}",
            ]  # fmt: skip
        for i, extra in enumerate(c.extra_disks, start=1):
            args += [
                "-drive", f"if=none,id=extra{i},format=raw,readonly=on,file={extra.resolve()}",
                "-device", f"virtio-blk-pci,drive=extra{i},serial=extra{i}",
            ]  # fmt: skip
        if c.forwards or c.net_boot:
            options = [f.netdev_option() for f in c.forwards]
            options += [c.net_boot.netdev_option()] if c.net_boot else []
            nic = "virtio-net-pci,netdev=net0" + (",bootindex=1" if c.net_boot else "")
            args += [
                "-netdev", ",".join(["user,id=net0,restrict=on", *options]),
                "-device", nic,
            ]  # fmt: skip
        else:
            args += ["-nic", "none"]
        return args + list(c.extra_args)

    def start(self, timeout: float = 30) -> Console:
        """Start QEMU on the machine's overlay; a second start continues from the same disk."""
        if self.running:
            raise VmError("the machine is already running")
        self._close_channels()
        n = len(self.runs) + 1
        serial, qmp = self.workdir / f"serial-{n}.sock", self.workdir / f"qmp-{n}.sock"
        log = self.workdir / f"console-{n}.log"
        self._stderr = (self.workdir / f"qemu-{n}.stderr").open("wb")
        argv = self.argv(serial, qmp)
        (self.workdir / f"qemu-{n}.argv").write_text(" ".join(argv) + "\n")
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,
        )
        self.runs.append(log)
        print(f"vm: QEMU run {n}, console log {log}")
        try:
            self._console = Console(_connect_unix(serial, self._proc, timeout), log)
            self._qmp = Qmp(_connect_unix(qmp, self._proc, timeout))
            self._qmp.execute("cont")
        except (OSError, VmError) as e:
            self.kill()
            raise VmError(f"QEMU did not start: {e}\n{self.qemu_stderr()}") from e
        return self._console

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def console(self) -> Console:
        if self._console is None:
            raise VmError("the machine was never started")
        return self._console

    def qemu_stderr(self) -> str:
        n = len(self.runs)
        path = self.workdir / f"qemu-{n}.stderr"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"QEMU stderr ({path}):\n{text[-2000:]}"

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (guest power-off); the VM is killed on timeout."""
        if self._proc is None:
            raise VmError("the machine was never started")
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.console.tail()
            self.kill()
            raise VmError(
                f"QEMU did not exit within {timeout:.0f} s\nconsole log: {self.console.log_path}\n"
                f"--- last {_TAIL_LINES} lines ---\n{tail}"
            ) from None
        self._close_channels()
        return code

    def kill(self) -> None:
        """Cut the power: SIGKILL QEMU, so nothing the guest has not written reaches the overlay."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        self._close_channels()

    def _close_channels(self) -> None:
        if self._qmp is not None:
            with contextlib.suppress(OSError):
                self._qmp.close()
            self._qmp = None
        if self._console is not None:
            self._console.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def qmp(self, command: str, **arguments: Any) -> Any:
        if self._qmp is None or not self.running:
            raise VmError(f"QMP {command}: the machine is not running")
        return self._qmp.execute(command, **arguments)

    def reset(self) -> None:
        """Press the reset button (the guest gets no chance to flush anything)."""
        self.qmp("system_reset")

    def quit(self, timeout: float = 10) -> None:
        """Stop QEMU through QMP; QEMU flushes its own overlay writes, the guest gets no warning."""
        if self.running:
            with contextlib.suppress(VmError, OSError):
                self.qmp("quit")
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout)
        self.kill()

    def poweroff(self, command: str = "systemctl poweroff", timeout: float = 120) -> int:
        """Shut the guest down cleanly from its shell and wait until QEMU exits."""
        self.console.write(command + "\n")
        return self.wait_exit(timeout)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- talking to the guest ----------------------------------------------------------------

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """``Console.wait_for``, with one press of the reset button if GRUB stalls (see
        ``grub_stalled``) after ``since``: what a hardware watchdog does for a real machine."""
        pressed: list[bool] = []

        def watchdog(text: str, idle: float) -> None:
            if not pressed and grub_stalled(text, since, idle):
                pressed.append(True)
                print(
                    f"vm: nothing printed for {idle:.0f} s after a warm reset or GRUB's banner (an "
                    "emulator stall under TCG); pressing reset once"
                )
                self.reset()

        return self.console.wait_for(pattern, timeout, since, watchdog)

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        """Run one shell command line in the guest's serial shell; return its status and output.

        The command is wrapped in two echo markers. The marker words are typed with a quote
        inside (``B''EGIN``), so the terminal's echo of the typed line never matches the
        markers the shell prints; output is what lies between the two printed markers.
        """
        if "\n" in command:
            raise ValueError("one command line only")
        tag = f"{os.getpid()}-{next(_marker_ids)}"
        since = self.console.position()
        self.console.write(f"echo @@B''EGIN-{tag}@@; {command}; echo @@E''ND-{tag}-$?@@\n")
        begin = self.wait_for(rf"@@BEGIN-{tag}@@\r?\n", timeout, since)
        end = self.wait_for(rf"@@END-{tag}-(\d+)@@", timeout, begin.end())
        output = self.console.text[begin.end() : end.start()]
        output = output.replace("\r\n", "\n").replace("\r", "")
        return CommandResult(command, int(end.group(1)), output)

    def wait_shell(self, timeout: float = 120, attempt: float = 5) -> None:
        """Wait until a shell answers on the console (a getty may still be starting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run("true", timeout=attempt)
                return
            except VmError:
                if not self.running or time.monotonic() + attempt > deadline:
                    raise


@contextlib.contextmanager
def machine(config: VmConfig, workdir: Path) -> Iterator[Machine]:
    with Machine(config, workdir) as m:
        yield m


def missing_tools(tools: Sequence[str]) -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [t for t in tools if shutil.which(t, path=path) is None]

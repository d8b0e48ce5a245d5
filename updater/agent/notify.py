"""systemd's notification protocol (sd_notify(3)), spoken directly: READY, STATUS, WATCHDOG,
STOPPING and WATCHDOG_USEC as datagrams to ``$NOTIFY_SOCKET``.

A few lines instead of a library: the protocol is one ``KEY=VALUE`` line per field in one
datagram to a Unix socket (an address starting with ``@`` is in the abstract namespace). Without
``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing. A failed send is logged once
and otherwise ignored: the agent's work must not depend on the service manager listening.
This module does not decide what to report.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child must not ping.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._warned = False

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                sys.stderr.write(f"updater agent: cannot notify systemd: {exc.strerror}\n")
                self._warned = True

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        self.send(status=status.replace("\n", " ")[:400])

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.send(watchdog="1")

    def busy_for(self, seconds: float) -> None:
        """Stretch the watchdog to cover one long step (a health check, a command) that cannot
        ping meanwhile; ``watchdog_restore`` ends it."""
        if self.watchdog_interval is not None:
            usec = int(max(seconds * 1.5, self.watchdog_interval) * 1e6)
            self.send(watchdog_usec=str(usec), watchdog="1")

    def watchdog_restore(self) -> None:
        if self.watchdog_interval is not None:
            self.send(watchdog_usec=str(int(self.watchdog_interval * 1e6)), watchdog="1")

    def stopping(self) -> None:
        self.send(stopping="1")

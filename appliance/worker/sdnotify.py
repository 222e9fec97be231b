"""The systemd notify protocol: datagrams to $NOTIFY_SOCKET (READY, WATCHDOG, STATUS, STOPPING).

Written here rather than taken from PyPI: the protocol is one sendto() call, and the
`sdnotify` package has been unmaintained since 2017 and knows no abstract sockets.
Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import os
import socket

# Variables that only the supervised main process may use; pool children must not
# inherit them, or they could ping systemd's watchdog for a wedged parent.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notify messages for one process; a no-op when not run under systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        if address:
            # "@name" is a socket in the abstract namespace.
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send KEY=VALUE lines in one datagram; True if it was sent."""
        if self._address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None, extend_usec: int | None = None) -> bool:
        fields = ["STOPPING=1"]
        if extend_usec:
            fields.append(f"EXTEND_TIMEOUT_USEC={extend_usec}")
        if status:
            fields.append(f"STATUS={status}")
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    Honours WATCHDOG_PID: the watchdog is meant for that process only.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) <= 0:
        return None
    owner = os.environ.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != (pid if pid is not None else os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


def scrub_child_environment() -> None:
    """Drop the notify variables from os.environ (call in each forked pool child)."""
    for name in NOTIFY_VARIABLES:
        os.environ.pop(name, None)

"""A systemd notify peer: a unix datagram socket the test owns, collecting messages."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifyPeer:
    """Receives sd_notify datagrams on a background thread, with their arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str | None = None) -> list[float]:
        return [
            t for t, f in list(self.messages) if key in f and (value is None or f[key] == value)
        ]

    def values(self, key: str) -> list[str]:
        return [f[key] for _, f in list(self.messages) if key in f]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

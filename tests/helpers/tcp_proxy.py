"""A TCP forwarder on a loopback port that a test controls: blackhole, then reset.

Put it between a client (worker, publisher) and a real server (redis-server):

    with TcpProxy("127.0.0.1", server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxy.blackhole()   # stop forwarding; every socket stays open (a dead link)
        proxy.reset()       # RST every connection (SO_LINGER 0) and forward again

While blackholed nothing is read from either side, so bytes wait in the kernel's
buffers exactly as they would behind a dead route; new connections are accepted (the
kernel would complete the handshake anyway) and wait too.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType

_POLL_SECONDS = 0.05
_CHUNK = 65536


class TcpProxy:
    """Forward 127.0.0.1:<port> to *target_host*:*target_port*, one thread per direction."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.accepted = 0
        self.resets = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """Sockets open on either side (two per proxied connection)."""
        with self._lock:
            return len(self._sockets)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._forwarding.clear()

    def restore(self) -> None:
        """Forward again what waited in the buffers."""
        self._forwarding.set()

    def reset(self) -> int:
        """Abort every connection with a TCP RST to both ends, then forward again.

        Returns how many sockets were reset.
        """
        with self._lock:
            doomed = list(self._sockets)
            self._sockets.clear()
        for sock in doomed:
            _abort(sock)
        self.resets += len(doomed)
        self.restore()
        return len(doomed)

    def close(self) -> None:
        """Stop accepting and reset everything still open."""
        self._closed.set()
        self._acceptor.join(5)
        self._listener.close()
        self.reset()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.add(client)
        self._wait_for_forwarding(client)
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            self._drop(client)
            return
        with self._lock:
            if client not in self._sockets:  # reset while connecting
                _abort(upstream)
                return
            self._sockets.add(upstream)
            self.accepted += 1
        finished = threading.Semaphore(0)  # released once per direction at EOF
        for src, dst in ((client, upstream), (upstream, client)):
            args = (src, dst, finished)
            threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _wait_for_forwarding(self, sock: socket.socket) -> None:
        while not self._forwarding.wait(_POLL_SECONDS):
            if self._closed.is_set() or sock.fileno() < 0:
                return

    def _pump(self, src: socket.socket, dst: socket.socket, finished: threading.Semaphore) -> None:
        try:
            while True:
                self._wait_for_forwarding(src)
                if src.fileno() < 0 or dst.fileno() < 0:
                    return
                readable, _, _ = select.select([src], [], [], _POLL_SECONDS)
                if not readable or not self._forwarding.is_set():
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    finished.release()
                    if finished.acquire(blocking=False) and finished.acquire(blocking=False):
                        self._close_pair(src, dst)  # both directions ended cleanly
                    else:
                        finished.release()
                    return
                dst.sendall(data)
        except (OSError, ValueError):
            # The peer went away, or reset() closed the socket under us.
            self._drop(src)
            self._drop(dst)

    def _close_pair(self, *pair: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.close()

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            owned = sock in self._sockets
            self._sockets.discard(sock)
        if owned:
            _abort(sock)


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()

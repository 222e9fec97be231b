"""A real systemd to test the units on: a cached debootstrap rootfs booted with systemd-nspawn.

The rootfs is built once (about a minute) under CACHE_DIR, keyed by suite and package
list, and copied for each session, so every session boots a clean machine. The container
gets its own network namespace (--private-network: only a loopback), so its redis-server
does not clash with the host's and the install inside runs offline from a wheelhouse.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.processes import wait_until

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "redis-server")
CACHE_DIR = Path(os.environ.get("APPLIANCE_TEST_CACHE", "/var/cache/appliance-tests"))
REPO = Path(__file__).resolve().parents[2]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_requirements() -> str | None:
    """Why the systemd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn, nsenter)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if not shutil.which(tool):
            return f"{tool} is missing; fix: apt-get install debootstrap systemd-container"
    return None


def rootfs_key() -> str:
    spec = f"{SUITE} minbase {','.join(PACKAGES)}"
    return f"rootfs-{SUITE}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def cached_rootfs(log: Path) -> Path:
    """The pristine rootfs, built on first use (a lock keeps parallel test runs apart)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / rootfs_key()
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "usr" / "lib" / "systemd" / "systemd").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        with log.open("wb") as out:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(building),
                    MIRROR,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=1200,
            )
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target


def copy_checkout(dest: Path) -> None:
    """The repository's tracked and new files (no venvs, caches or .git)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file() and not src.is_symlink():
            (dest / src.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(REPO))


def build_wheelhouse(dest: Path) -> Path:
    """`make wheelhouse FLOWER=1`: this package's wheel, the wheels of the runtime lock plus
    Flower's, and both locks (requirements.txt, requirements-flower.txt), for Python 3.11."""
    assert sys.version_info[:2] == (3, 11), "the wheelhouse must match bookworm's Python 3.11"
    dest.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        ["make", "-C", str(REPO), "wheelhouse", f"WHEELHOUSE={dest}",
         f"TARGET_PYTHON={sys.executable}", "FLOWER=1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert built.returncode == 0, f"make wheelhouse failed:\n{built.stdout}\n{built.stderr}"
    return dest


class Machine:
    """A booted container; commands run in it through nsenter."""

    def __init__(self, root: Path, console: Path) -> None:
        self.root = root
        self.console = console
        self.boot_seconds = 0.0
        self._console = console.open("wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit",
             "--private-network", "--machine=appliance-test", "-b"],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.leader = wait_until(self._find_leader, 60, "the container's systemd to start")

    def _find_leader(self) -> int | None:
        """The container's PID 1 (systemd), a descendant of the nspawn process."""
        if self.proc.poll() is not None:
            raise AssertionError("systemd-nspawn exited:\n" + self.console.read_text()[-3000:])
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return None

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* inside the container (as *user* through runuser), capture its output."""
        prefix = ["runuser", "-u", user, "--"] if user else []
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a",
             "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", *prefix, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", unit, "-p", prop, "--value").stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout

    def wait_booted(self, timeout: float = 120) -> str:
        """Wait for the boot to finish ("degraded" counts: the tests check their own units)."""

        def state() -> str | None:
            out = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if out in ("maintenance", "stopping", "offline"):
                raise AssertionError(f"the machine is {out}:\n{self.console.read_text()[-3000:]}")
            return out if out in ("running", "degraded") else None

        return str(wait_until(state, timeout, "the machine to boot", interval=0.2))

    def poweroff(self, timeout: float = 60) -> None:
        """SIGTERM makes systemd-nspawn shut the container down cleanly; then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._console.close()


@contextmanager
def booted_machine(workdir: Path, wheelhouse: Path) -> Iterator[Machine]:
    """A fresh copy of the cached rootfs with the checkout and wheelhouse in /root, booted."""
    started = time.monotonic()
    pristine = cached_rootfs(workdir / "debootstrap.log")
    root = workdir / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(root)], check=True)
    copy_checkout(root / "root" / "appliance")
    shutil.copytree(wheelhouse, root / "root" / "wheelhouse")
    machine = Machine(root, workdir / "console.log")
    try:
        machine.wait_booted()
        machine.boot_seconds = time.monotonic() - started
        yield machine
    finally:
        machine.poweroff()
        shutil.rmtree(root, ignore_errors=True)

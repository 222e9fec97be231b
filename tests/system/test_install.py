"""scripts/install.sh --root DIR: the tree an image build gets, and a re-run changes nothing.

Offline (--wheelhouse) into a directory: no systemctl, apt-get or useradd is run (they are
printed), so this runs as any user in a few seconds once the wheelhouse is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from appliance.host.supervisor_conf import deploy_dir

INSTALL = deploy_dir().parent / "scripts" / "install.sh"


def install(root: Path, wheelhouse: Path, *args: str) -> str:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--wheelhouse", str(wheelhouse), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.suffix != ".pyc"
    }


def env_values(root: Path) -> dict[str, str]:
    lines = (root / "etc/appliance/appliance.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_root_install_creates_the_tree_and_a_rerun_changes_nothing(
    tmp_path: Path, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    out = install(root, wheelhouse)
    assert "for the target system (--root): useradd --system" in out
    assert "systemctl enable appliance.target" in out
    env_file = root / "etc/appliance/appliance.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    env = env_values(root)
    password = env["APPLIANCE_BROKER_URL"].split("://:")[1].split("@")[0]
    assert len(password) >= 32
    assert env["APPLIANCE_RESULT_BACKEND"] == f"redis://:{password}@127.0.0.1:6379/1"
    assert env["APPLIANCE_DATABASE_URL"] == "sqlite:////var/lib/appliance/appliance.db"
    assert password not in out
    # Secrets: the env file is 0640 root:appliance (chown is printed for the target system).
    assert "chown root:appliance /etc/appliance/appliance.env" in out
    redis = (root / "etc/redis/appliance.conf").read_text()
    assert f"requirepass {password}" in redis and "maxmemory-policy noeviction" in redis
    # The local Redis listens on loopback only, protected mode on.
    assert "\nbind 127.0.0.1 -::1\n" in redis and "\nprotected-mode yes\n" in redis
    assert [line for line in redis.splitlines() if line.startswith(("bind ", "port "))] == [
        "bind 127.0.0.1 -::1"
    ]
    assert "appendonly yes" in redis and "appendfsync everysec" in redis
    units = root / "etc/systemd/system"
    assert "TimeoutStopSec=390" in (units / "appliance-worker@.service").read_text()
    for unit in ("appliance-worker@.service", "appliance-beat.service"):
        assert (units / f"{unit}.d" / "redis-local.conf").is_file()
    for name in ("appliance.target", "appliance-healthcheck.timer", "appliance-flower.service"):
        assert (units / name).is_file()
    venv = root / "opt/appliance"
    assert (venv / "bin/appliance").read_text().startswith("#!/opt/appliance/bin/python")
    assert os.access(venv / "bin/appliance-healthcheck", os.X_OK)
    assert (root / "var/lib/appliance").is_dir() and (root / "var/log/appliance").is_dir()

    before = hashes(root)
    again = install(root, wheelhouse)
    assert "nothing changed" in again
    assert hashes(root) == before


def test_stop_timeout_is_rendered_from_the_configured_time_limit(
    tmp_path: Path, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    install(root, wheelhouse)
    with (root / "etc/appliance/appliance.env").open("a") as env:
        env.write("APPLIANCE_TASK_TIME_LIMIT=1200\n")
    out = install(root, wheelhouse)
    assert "wrote /etc/systemd/system/appliance-worker@.service" in out
    unit = (root / "etc/systemd/system/appliance-worker@.service").read_text()
    assert "TimeoutStopSec=1230" in unit


def test_external_redis_and_supervisor(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "root"
    url = "redis://:pw@redis.example.internal:6380/2"
    out = install(root, wheelhouse, "--redis-url", url, "--supervisor")
    assert env_values(root)["APPLIANCE_BROKER_URL"] == url
    assert not (root / "etc/redis").exists()
    assert not (root / "etc/systemd").exists()
    conf = (root / "etc/supervisor/conf.d/appliance.conf").read_text()
    assert "command=/opt/appliance/bin/appliance worker --group default" in conf
    assert "stopasgroup=false" in conf and "stopwaitsecs=390" in conf
    assert "pw@" not in conf
    cron = (root / "etc/cron.d/appliance-healthcheck").read_text()
    assert "appliance /opt/appliance/bin/appliance-healthcheck" in cron
    assert "supervisorctl update appliance" in out


# The venv holds exactly requirements/runtime.txt ---------------------------------------------

REPO = INSTALL.parents[1]
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
FLOWER_LOCK = REPO / "requirements" / "runtime-flower.txt"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python: Path) -> dict[str, str]:
    """The marker environment of the installed venv's interpreter (its pip's packaging)."""
    code = "import json; from pip._vendor.packaging import markers; "
    code += "print(json.dumps(markers.default_environment()))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    env: dict[str, str] = json.loads(out.stdout)
    return env


def locked_for(python: Path) -> dict[str, str]:
    """name -> version of the runtime lock's entries that apply to *python*."""
    env = target_environment(python)
    pins = {}
    for line in RUNTIME_LOCK.read_text().replace("\\\n", " ").splitlines():
        if not line.strip() or line.startswith(("#", " ")):
            continue
        req = Requirement(line.split(" --hash=")[0].strip())
        if req.marker is None or req.marker.evaluate(env):
            (pin,) = req.specifier
            pins[norm(req.name)] = pin.version
    return pins


def frozen(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    versions = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        if not version:  # celery-appliance @ file:///...whl
            name, version = line.split(" @ ")[0], "(wheel)"
        versions[norm(name)] = version
    return versions


def assert_exactly_locked(root: Path) -> None:
    python = root / "opt/appliance/bin/python"
    installed = frozen(python)
    # Beside the lock: this package and what `python3 -m venv` put there (pip, setuptools).
    assert installed.pop("celery-appliance") == "(wheel)"
    for seeded in ("pip", "setuptools"):
        installed.pop(seeded, None)
    assert installed == locked_for(python)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make wheelhouse FLOWER=1`: this package's wheel, the runtime lock's wheels plus
    Flower's, and the locks themselves.

    (Overrides conftest's `pip wheel` wheelhouse, which holds neither the lock nor the
    postgres extra that the lock installs.)
    """
    if not shutil.which("make"):
        pytest.skip("make is missing; fix: apt-get install make")
    dest = tmp_path_factory.mktemp("wheelhouse")
    built = subprocess.run(
        ["make", "-C", str(REPO), "wheelhouse", f"WHEELHOUSE={dest}",
         f"TARGET_PYTHON={sys.executable}", "FLOWER=1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert (dest / "requirements.txt").read_bytes() == RUNTIME_LOCK.read_bytes()
    assert (dest / "requirements-flower.txt").read_bytes() == FLOWER_LOCK.read_bytes()
    return dest


def test_the_venv_holds_exactly_the_locked_versions(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "root"
    install(root, wheelhouse)
    assert_exactly_locked(root)


def test_an_offline_wheel_that_differs_from_the_lock_is_refused(
    tmp_path: Path, wheelhouse: Path
) -> None:
    wheels = tmp_path / "wheels"
    shutil.copytree(wheelhouse, wheels)
    (vine,) = wheels.glob("vine-*.whl")
    with vine.open("ab") as tampered:  # still a readable zip, but not the locked file
        tampered.write(b"\0")
    root = tmp_path / "root"
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--wheelhouse", str(wheels)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DO NOT MATCH THE HASHES" in result.stderr and "vine" in result.stderr
    assert not list((root / "opt/appliance").glob("lib/python3*/site-packages/appliance"))


def test_with_flower_adds_flower_and_one_generated_credential_and_reruns_keep_them(
    tmp_path: Path, wheelhouse: Path
) -> None:
    root = tmp_path / "root"
    install(root, wheelhouse)  # an earlier install without Flower: its env file stays
    out = install(root, wheelhouse, "--with-flower")
    user, _, password = env_values(root)["FLOWER_BASIC_AUTH"].partition(":")
    assert user == "appliance" and len(password) >= 24
    assert password not in out
    assert "added FLOWER_BASIC_AUTH to /etc/appliance/appliance.env" in out
    assert "systemctl enable appliance-flower.service" in out
    units = root / "etc/systemd/system"
    assert (units / "appliance-flower.service.d" / "redis-local.conf").is_file()
    installed = frozen(root / "opt/appliance/bin/python")
    assert installed["flower"] == FLOWER_LOCK.read_text().split("flower==")[1].split()[0]
    env_file = root / "etc/appliance/appliance.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640

    before = hashes(root)
    again = install(root, wheelhouse)  # no flag: Flower is kept, nothing changes
    assert "Flower is installed in /opt/appliance: keeping it" in again
    assert "nothing changed" in again
    assert hashes(root) == before
    assert env_file.read_text().count("FLOWER_BASIC_AUTH=") == 1

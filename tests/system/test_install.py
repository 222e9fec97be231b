"""scripts/install.sh --root DIR: the tree an image build gets, and a re-run changes nothing.

Offline (--wheelhouse) into a directory: no systemctl, apt-get or useradd is run (they are
printed), so this runs as any user in a few seconds once the wheelhouse is built.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

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

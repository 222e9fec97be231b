"""scripts/install.sh as a subprocess: --dry-run changes nothing; each refusal has its code.

(The real installs, into a directory tree and into a booted systemd, are in tests/system.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.host.supervisor_conf import deploy_dir

SCRIPTS = deploy_dir().parent / "scripts"
INSTALL = SCRIPTS / "install.sh"

# Exit codes of install.sh (README: Deployment).
EX_USAGE, EX_BAD_URL, EX_UNSUPPORTED, EX_PYTHON, EX_NOPERM = 64, 65, 69, 72, 77


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: "), result.stderr
    return lines[0]


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install("--dry-run", "--root", str(root))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "useradd --system",
        "would write",
        "/etc/appliance/appliance.env",
        "/etc/redis/appliance.conf",
        "-m venv",
        "appliance-worker@.service",
        "systemctl enable appliance.target",
        "appliance-worker@default.service",
        "db upgrade",
        "health",
    ):
        assert step in out, f"{step!r} missing from:\n{out}"
    assert "dry run: nothing was changed" in out
    assert not root.exists() or not any(root.rglob("*"))


def test_dry_run_on_the_host_changes_nothing() -> None:
    watched = [Path(p) for p in ("/etc/appliance", "/opt/appliance", "/var/lib/appliance")]
    before = [p.exists() for p in watched]
    result = install("--dry-run", "--supervisor")
    assert result.returncode == 0, result.stderr
    assert "would" in result.stdout
    assert [p.exists() for p in watched] == before


def test_unknown_option_is_a_usage_error() -> None:
    result = install("--frobnicate")
    assert result.returncode == EX_USAGE
    assert "--frobnicate" in one_error_line(result)


@pytest.mark.parametrize("url", ["http://example.org", "redis//:s3cret@host", "redis://"])
def test_bad_redis_url_is_refused_without_echoing_a_password(url: str) -> None:
    result = install("--dry-run", "--redis-url", url)
    assert result.returncode == EX_BAD_URL
    line = one_error_line(result)
    assert "--redis-url" in line and "fix:" in line and "s3cret" not in line


def test_unsupported_os_is_refused(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('ID=fedora\nID_LIKE="rhel centos"\n')
    result = install("--dry-run", env={"INSTALL_OS_RELEASE": str(release)})
    assert result.returncode == EX_UNSUPPORTED
    assert "fedora" in one_error_line(result)


def test_python_older_than_3_11_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "python3"
    old.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.2" && exit 0\nexit 1\n')
    old.chmod(0o755)
    result = install("--dry-run", env={"PYTHON": str(old)})
    assert result.returncode == EX_PYTHON
    assert "3.9.2" in one_error_line(result)


def test_not_root_is_refused() -> None:
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("setpriv (util-linux) is missing")
        # As nobody, reading the script from stdin (nobody may not read the checkout).
        with INSTALL.open() as script:
            result = subprocess.run(
                [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                 "bash", "-s", "--"],
                stdin=script,
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
                check=False,
            )  # fmt: skip
    else:
        result = install()
    assert result.returncode == EX_NOPERM
    assert "root" in one_error_line(result)


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing (CI installs it: apt-get install shellcheck)")
        pytest.skip("shellcheck is missing; fix: apt-get install shellcheck")
    scripts = [SCRIPTS / n for n in ("install.sh", "uninstall.sh", "healthcheck.sh", "dev.sh")]
    result = subprocess.run(
        [shellcheck, *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_healthcheck_wrapper_is_silent_when_ok_and_passes_the_code_through(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "appliance"
    fake.write_text('#!/bin/sh\necho "APPLIANCE $STATUS - $*"\nexit "$CODE"\n')
    fake.chmod(0o755)
    wrapper = str(SCRIPTS / "healthcheck.sh")
    env = {**os.environ, "APPLIANCE_BIN": str(fake)}
    ok = subprocess.run(
        [wrapper], env={**env, "CODE": "0", "STATUS": "OK"}, capture_output=True, text=True
    )
    assert (ok.returncode, ok.stdout) == (0, "")
    crit = subprocess.run(
        [wrapper, "/var/lib/node/appliance.prom"],
        env={**env, "CODE": "2", "STATUS": "CRITICAL"},
        capture_output=True,
        text=True,
    )
    assert crit.returncode == 2
    expected = "APPLIANCE CRITICAL - health --textfile /var/lib/node/appliance.prom"
    assert crit.stdout.strip() == expected

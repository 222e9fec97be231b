"""scripts/install.sh as a subprocess: --dry-run changes nothing; each refusal has its code.

(The real installs, into a directory tree and into a booted systemd, are in tests/system.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from appliance.host.supervisor_conf import deploy_dir

SCRIPTS = deploy_dir().parent / "scripts"
INSTALL = SCRIPTS / "install.sh"

# Exit codes of install.sh (docs/install.md, Install on a host).
EX_USAGE, EX_BAD_URL, EX_NO_WHEEL, EX_UNSUPPORTED, EX_PYTHON, EX_NOPERM = 64, 65, 66, 69, 72, 77


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


# The locks (requirements/*.txt, `make lock`) -----------------------------------------------

REPO = SCRIPTS.parent
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
DEV_LOCK = REPO / "requirements" / "dev.txt"
FLOWER_LOCK = REPO / "requirements" / "runtime-flower.txt"
# Pinned to the minor the suite has proven (pyproject.toml): the appliance subclasses kombu's
# Redis transport and billiard's pool and reaches into their private attributes.
MINOR_PINNED = ("celery", "kombu", "billiard", "redis")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, Marker | None, list[str]]]:
    """name -> (version, marker, sha256 hashes) of every entry of a `--generate-hashes` lock."""
    entries = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if not line.strip() or line.startswith(("#", " ")):
            continue
        spec, *hashes = line.split(" --hash=sha256:")
        req = Requirement(spec.strip())
        (pin,) = req.specifier
        assert pin.operator == "==", f"{path.name}: {spec} is not pinned with =="
        entries[norm(req.name)] = (pin.version, req.marker, [h.strip() for h in hashes])
    return entries


def applies(marker: Marker | None) -> bool:
    return marker is None or marker.evaluate()


def project() -> dict[str, Any]:
    meta: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return meta


def assert_lock_satisfies(lock: Path, requirements: list[str]) -> None:
    entries = read_lock(lock)
    for text in requirements:
        req = Requirement(text)
        assert norm(req.name) in entries, f"{req.name} is missing from {lock.name}; fix: make lock"
        version = entries[norm(req.name)][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock.name} has {req.name}=={version}, pyproject.toml wants {req}; fix: make lock"
        )


def test_each_lock_pins_every_package_with_hashes_and_says_how_to_regenerate_it() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK, FLOWER_LOCK):
        header = lock.read_text().splitlines()[:2]
        assert "uv pip compile pyproject.toml" in header[1], header
        for flag in ("--generate-hashes", "--universal", "--python-version 3.11"):
            assert flag in header[1], f"{lock.name} was not compiled with {flag}"
        entries = read_lock(lock)
        assert len(entries) > 20
        for name, (_, _, hashes) in entries.items():
            assert hashes and all(len(h) == 64 for h in hashes), f"{name} has no sha256"


def test_the_runtime_lock_satisfies_the_package_and_its_postgres_extra() -> None:
    meta = project()
    assert_lock_satisfies(RUNTIME_LOCK, meta["dependencies"])
    assert_lock_satisfies(RUNTIME_LOCK, meta["optional-dependencies"]["postgres"])


def test_the_dev_lock_satisfies_every_extra_at_the_runtime_versions() -> None:
    meta = project()
    extras = meta["optional-dependencies"]
    for extra in ("postgres", "test", "bench", "flower", "examples"):
        assert_lock_satisfies(DEV_LOCK, extras[extra])
    assert_lock_satisfies(DEV_LOCK, meta["dependencies"])
    dev = {name: entry[0] for name, entry in read_lock(DEV_LOCK).items()}
    runtime = {name: entry[0] for name, entry in read_lock(RUNTIME_LOCK).items()}
    differ = {name: (v, dev.get(name)) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"the tests would not run the runtime's versions: {differ}"


def test_the_flower_lock_is_the_runtime_lock_plus_flower_at_the_tested_versions() -> None:
    """install.sh --with-flower installs it: every runtime pin unchanged (hosts with and
    without Flower run the same appliance), Flower's own pins those the tests ran."""
    meta = project()
    assert_lock_satisfies(FLOWER_LOCK, meta["optional-dependencies"]["flower"])
    flower, runtime, dev = (read_lock(p) for p in (FLOWER_LOCK, RUNTIME_LOCK, DEV_LOCK))
    assert {n: flower.get(n) for n in runtime} == runtime, "fix: make lock"
    extra = set(flower) - set(runtime)
    assert "flower" in extra and "tornado" in extra
    assert {n: flower[n][0] for n in extra} == {n: dev[n][0] for n in extra}, "fix: make lock"


@pytest.mark.parametrize("name", MINOR_PINNED)
def test_the_transport_and_pool_packages_are_pinned_to_the_locked_minor(name: str) -> None:
    (text,) = [d for d in project()["dependencies"] if norm(Requirement(d).name) == name]
    spec = Requirement(text).specifier
    major, minor = (int(p) for p in read_lock(RUNTIME_LOCK)[name][0].split(".")[:2])
    assert spec.contains(f"{major}.{minor}.0") or spec.contains(f"{major}.{minor}.1")
    assert not spec.contains(f"{major}.{minor + 1}.0"), f"{text}: a minor bump is not held back"


def test_this_environment_runs_exactly_the_dev_lock() -> None:
    """What scripts/dev.sh (and so CI) installs: the tests ran against the locked versions."""
    wrong = {}
    for name, (version, marker, _) in read_lock(DEV_LOCK).items():
        if not applies(marker):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"{installed}, locked {version}"
    assert not wrong, f"not the locked versions: {wrong}; fix: scripts/dev.sh setup && make lock"


def test_dry_run_installs_the_locked_dependencies_then_the_package_without_deps() -> None:
    result = install("--dry-run", "--supervisor")
    assert result.returncode == 0, result.stderr
    assert f"pip install --require-hashes -r {RUNTIME_LOCK}" in result.stdout
    assert "(--no-deps)" in result.stdout


def fake_wheelhouse(path: Path, lock: bool) -> Path:
    path.mkdir()
    (path / "celery_appliance-0.1.0-py3-none-any.whl").write_bytes(b"not a real wheel")
    if lock:
        shutil.copy(RUNTIME_LOCK, path / "requirements.txt")
    return path


@pytest.mark.parametrize("carries_lock", [True, False])
def test_offline_install_checks_hashes_against_the_wheelhouse_lock_else_the_checkouts(
    tmp_path: Path, carries_lock: bool
) -> None:
    wheels = fake_wheelhouse(tmp_path / "wheels", lock=carries_lock)
    result = install("--dry-run", "--root", str(tmp_path / "root"), "--wheelhouse", str(wheels))
    assert result.returncode == 0, result.stderr
    lock = wheels / "requirements.txt" if carries_lock else RUNTIME_LOCK
    lines = result.stdout.splitlines()
    (deps,) = [line for line in lines if "--require-hashes" in line]
    assert f"--no-index --find-links {wheels} --require-hashes -r {lock}" in deps
    (own,) = [line for line in lines if "--force-reinstall" in line]
    assert "--no-deps" in own and "celery_appliance-0.1.0-py3-none-any.whl" in own
    assert "pip check" in result.stdout


def test_with_flower_installs_the_flower_lock_generates_credentials_and_enables_flower(
    tmp_path: Path,
) -> None:
    result = install("--dry-run", "--root", str(tmp_path / "root"), "--with-flower")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"pip install --require-hashes -r {FLOWER_LOCK}" in out
    assert "would append FLOWER_BASIC_AUTH (a generated password)" in out
    assert "systemctl enable appliance-flower.service" in out
    assert "appliance-flower.service.d/redis-local.conf" in out
    assert "flower: http://127.0.0.1:5555 (user and password: FLOWER_BASIC_AUTH in" in out
    plain = install("--dry-run", "--root", str(tmp_path / "other")).stdout
    assert "FLOWER_BASIC_AUTH" not in plain and "enable appliance-flower" not in plain


def test_with_flower_under_supervisor_renders_the_flower_program() -> None:
    result = install("--dry-run", "--supervisor", "--with-flower")
    assert result.returncode == 0, result.stderr
    assert f"-r {FLOWER_LOCK}" in result.stdout
    assert "(appliance deploy supervisor-conf --flower)" in result.stdout
    plain = install("--dry-run", "--supervisor").stdout
    assert "(appliance deploy supervisor-conf)" in plain


def test_with_flower_takes_the_wheelhouse_flower_lock_and_refuses_a_wheelhouse_without(
    tmp_path: Path,
) -> None:
    wheels = fake_wheelhouse(tmp_path / "wheels", lock=True)
    args = ("--dry-run", "--root", str(tmp_path / "root"), "--wheelhouse", str(wheels))
    refused = install(*args, "--with-flower")
    assert refused.returncode == EX_NO_WHEEL
    assert "make wheelhouse FLOWER=1" in one_error_line(refused)
    shutil.copy(FLOWER_LOCK, wheels / "requirements-flower.txt")
    result = install(*args, "--with-flower")
    assert result.returncode == 0, result.stderr
    assert f"--require-hashes -r {wheels / 'requirements-flower.txt'}" in result.stdout


def test_offline_install_without_any_lock_is_refused(tmp_path: Path) -> None:
    # install.sh on its own (no checkout beside it) and a wheelhouse that carries no lock.
    (tmp_path / "scripts").mkdir()
    shutil.copy(INSTALL, tmp_path / "scripts" / "install.sh")
    wheels = fake_wheelhouse(tmp_path / "wheels", lock=False)
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "install.sh"), "--dry-run",
         "--root", str(tmp_path / "root"), "--wheelhouse", str(wheels)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EX_NO_WHEEL
    line = one_error_line(result)
    assert "lock" in line and "make wheelhouse" in line

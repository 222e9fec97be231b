"""`appliance up`: a private Redis, worker and beat under supervisord; nothing left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers.processes import ApplianceProcess, run_cli, wait_until


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line or environment names *marker* (our state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def test_up_runs_a_task_from_a_second_terminal_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env.update(APPLIANCE_STATE_DIR=str(state), APPLIANCE_ENV_FILE=os.environ["APPLIANCE_ENV_FILE"])
    up = ApplianceProcess(["up"], env, tmp_path / "up.log")
    try:
        wait_until(lambda: (state / "embedded" / "broker.url").exists(), 60, "the broker URL file")
        # A second terminal: same state dir, no broker URL of its own.
        submitted = run_cli(
            env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "60", timeout=90
        )
        assert submitted.returncode == 0, submitted.stderr + up.output()
        assert submitted.stdout.strip() == "5"
        password = (
            (state / "embedded" / "redis.conf").read_text().split("requirepass ")[1].split()[0]
        )
        assert password not in up.output()
        assert _processes_mentioning(str(state))
    finally:
        up.proc.send_signal(signal.SIGTERM)
        code = up.proc.wait(120)
        up.kill()
    assert code == 0, up.output()
    assert not (state / "embedded" / "broker.url").exists()
    assert _processes_mentioning(str(state)) == []


def _get(url: str, auth: str | None = None) -> tuple[int, object]:
    """GET *url* (with basic auth *auth*): the status (0: no answer) and the body (JSON)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, ConnectionError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:  # /healthcheck says OK
        return status, body.decode()


def test_up_with_flower_shows_the_workers_and_with_task_events_the_tasks(tmp_path: Path) -> None:
    from tests.helpers.processes import free_port, is_node_of

    state, port = tmp_path / "state", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    env.update(
        APPLIANCE_STATE_DIR=str(state),
        APPLIANCE_ENV_FILE=os.environ["APPLIANCE_ENV_FILE"],
        APPLIANCE_TASK_EVENTS="true",
        APPLIANCE_CONCURRENCY="2",
    )
    up = ApplianceProcess(["up", "--flower", "--flower-port", str(port)], env, tmp_path / "up.log")
    base = f"http://127.0.0.1:{port}"
    try:
        credentials = state / "embedded" / "flower-credentials"
        wait_until(credentials.exists, 60, "the Flower credentials file")
        auth = credentials.read_text().strip()
        wait_until(lambda: _get(f"{base}/healthcheck")[0] == 200, 90, "Flower to answer")
        assert auth.split(":", 1)[1] not in up.output()
        assert _get(f"{base}/api/workers")[0] == 401  # no credentials, no API

        def workers() -> object:
            status, body = _get(f"{base}/api/workers?refresh=1", auth)
            nodes = [n for n in (body or {}) if is_node_of("default", n)]  # type: ignore[union-attr]
            return status == 200 and len(nodes) == 2 and nodes

        nodes = wait_until(workers, 60, "Flower to list both consumer nodes", interval=1)
        submitted = run_cli(env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "60")
        assert submitted.returncode == 0, submitted.stderr + up.output()
        task_id = submitted.stderr.split(" as ")[-1].strip()

        def task() -> object:
            status, body = _get(f"{base}/api/tasks", auth)
            found = (body or {}).get(task_id) if status == 200 else None  # type: ignore[union-attr]
            return found if found and found.get("state") == "SUCCESS" else None

        shown = wait_until(task, 30, "Flower to list the task as SUCCESS", interval=0.5)
        assert shown["name"] == "demo.add" and shown["worker"] in nodes
    finally:
        up.proc.send_signal(signal.SIGTERM)
        code = up.proc.wait(120)
        up.kill()
    assert code == 0, up.output()
    assert _processes_mentioning(str(state)) == []

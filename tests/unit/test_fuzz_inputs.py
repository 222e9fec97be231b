"""Bad input, fuzzed: every input either parses or fails with the project's one-line error.

Hypothesis feeds random text to the CLI's JSON options (`appliance submit NAME --args /
--kwargs`), to the payload check behind `appliance.submit`, to the settings parser (every
setting, from the environment and from the env file), to the health check's own settings
reader, and random bytes to the health check's Redis reply parser. Allowed outcomes: the
value is accepted, or the documented error (ConfigError = exit 78, click's usage error =
exit 2, SubmitOptionError = exit 2, Nagios UNKNOWN/CRITICAL); never a traceback or
another exception type. Example counts stay modest so this file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from appliance.cli import cli
from appliance.client import checks
from appliance.config.settings import Settings, load_settings
from appliance.core import exitcodes
from appliance.errors import ConfigError, SubmitOptionError
from appliance.health.config import load_health_config
from appliance.health.resp import Resp, RespConnectionError, RespError

# Hypothesis's own files (a cache of constants) go to /tmp, not into the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "appliance-hypothesis")

# The autouse isolated_env fixture (tests/conftest.py) is set up once per test, not per
# example; each example patches os.environ itself and restores it.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,  # no example database: each run starts fresh
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Loading the settings costs ~30 ms (pydantic, the env file): fewer examples there.
FUZZ_SETTINGS = settings(FUZZ, max_examples=60)

# What an environment variable can hold: no NUL, no lone surrogate.
ENV_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _json_like() -> st.SearchStrategy[str]:
    """Valid JSON of every type, JSON with a byte cut or inserted, and plain text."""
    dumped = JSON_VALUES.map(json.dumps)

    @st.composite
    def mangled(draw: st.DrawFn) -> str:
        text = draw(dumped)
        at = draw(st.integers(0, len(text)))
        insert = draw(st.sampled_from(["", "[", "]", "{", "}", ",", '"', ":", "\\", "x"]))
        cut = draw(st.integers(0, 2))
        return text[:at] + insert + text[at + cut :]

    return st.one_of(dumped, mangled(), st.text(max_size=30))


# The CLI's --args / --kwargs ----------------------------------------------------------------


def _expected_exit(text: str, wanted: type) -> int:
    """65 (parsed; the fuzz task name is unknown) when *text* is JSON of *wanted*, else 2."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return exitcodes.USAGE
    return exitcodes.UNKNOWN_TASK if isinstance(value, wanted) else exitcodes.USAGE


@pytest.mark.parametrize(("option", "wanted"), [("--args", list), ("--kwargs", dict)])
@FUZZ
@given(text=_json_like())
def test_submit_json_options_parse_or_exit_2_with_one_line(
    option: str, wanted: type, text: str
) -> None:
    # An unknown task name: a parsed value reaches api.submit, which refuses the name
    # (exit 65) before any connection, so no Redis is needed.
    result = CliRunner().invoke(cli, ["submit", "fuzz.no_such_task", option, text])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code == _expected_exit(text, wanted), (text, result.output)
    if result.exit_code == exitcodes.USAGE:
        assert f"Invalid value for '{option}'" in result.output
    else:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("appliance: error: unknown task")


@pytest.mark.parametrize("depth", [1_000, 20_000])
def test_deeply_nested_json_is_a_usage_error_not_a_traceback(depth: int) -> None:
    # json.loads recurses once per level: Python's recursion limit, not a JSON error.
    text = "[" * depth + "]" * depth
    result = CliRunner().invoke(cli, ["submit", "fuzz.no_such_task", "--args", text])
    assert result.exit_code in (exitcodes.USAGE, exitcodes.UNKNOWN_TASK), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# The payload check of appliance.submit / submit_many ---------------------------------------


@FUZZ
@given(
    args=st.lists(JSON_VALUES, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
    cap=st.integers(0, 400),
)
def test_payload_check_accepts_or_refuses_with_one_line(
    args: list[Any], kwargs: dict[str, Any], cap: int
) -> None:
    with _env({"APPLIANCE_MAX_PAYLOAD_BYTES": str(cap)}):
        conf = load_settings()
    try:
        size = checks.check_payload(conf, "demo.add", args, kwargs)
    except SubmitOptionError as exc:
        message = str(exc)
        assert cap and "APPLIANCE_MAX_PAYLOAD_BYTES" in message and "fix:" in message
        assert "\n" not in message and exc.exit_code == exitcodes.USAGE
    else:
        assert cap == 0 or size <= cap


@pytest.mark.parametrize(
    "args",
    [[object()], [float("nan"), {"k": object()}], [Path("/tmp")]],
    ids=["object", "nested object", "path"],
)
def test_arguments_json_cannot_carry_are_refused_before_publish(args: list[Any]) -> None:
    with pytest.raises(SubmitOptionError) as raised:
        checks.check_payload(load_settings(), "demo.add", args, {})
    assert "cannot be sent as JSON" in str(raised.value) and "fix:" in str(raised.value)


# The settings parser --------------------------------------------------------------------------


def _variables() -> list[str]:
    """The environment variable of every setting (first alias when it has several)."""
    names = []
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        names.append(str(choices[0]) if choices else f"APPLIANCE_{field.upper()}")
    return names


VARIABLES = _variables()
SECRET = "Pw0rdMarker"
URL_PART = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=0, max_size=12)
SETTING_VALUES = st.one_of(
    ENV_TEXT,
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", " ", "0", "-1", "1.5", "true", "false", "yes", "maybe", "None"]),
    st.lists(ENV_TEXT, max_size=4).map(",".join),
    st.lists(st.tuples(ENV_TEXT, ENV_TEXT).map("=".join), max_size=3).map(";".join),
    st.builds(
        lambda scheme, user, host, rest: f"{scheme}://{user}:{SECRET}@{host}{rest}",
        st.sampled_from(["redis", "rediss", "sentinel", "sqlite", "postgresql", "http", ""]),
        URL_PART,
        URL_PART,
        ENV_TEXT,
    ),
)


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, values):
        yield


URL_VARIABLES = ("APPLIANCE_BROKER_URL", "APPLIANCE_RESULT_BACKEND", "APPLIANCE_DATABASE_URL")


def _assert_config_error(exc: ConfigError) -> None:
    message = str(exc)
    assert "\n" not in message and "fix:" in message, message
    assert "APPLIANCE_" in message or "CELERY_" in message, message
    if any(message.startswith(f"invalid {var}") for var in URL_VARIABLES):
        assert f":{SECRET}@" not in message, message  # the password of a URL is masked
    assert exc.exit_code == exitcodes.CONFIG


@FUZZ_SETTINGS
@given(values=st.dictionaries(st.sampled_from(VARIABLES), SETTING_VALUES, min_size=1, max_size=3))
def test_settings_from_the_environment_parse_or_fail_with_one_line(values: dict[str, str]) -> None:
    with _env(values):
        try:
            parsed = load_settings()
        except ConfigError as exc:
            _assert_config_error(exc)
        else:
            public = parsed.public_dict()
            for key in ("broker_url", "result_backend", "database_url"):
                assert f":{SECRET}@" not in str(public[key])


@FUZZ_SETTINGS
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(VARIABLES), SETTING_VALUES).map(
            lambda kv: f"{kv[0]}={json.dumps(kv[1])}"
        )
        | ENV_TEXT,
        max_size=4,
    )
)
def test_settings_from_the_env_file_parse_or_fail_with_one_line(lines: list[str]) -> None:
    env_file = Path(os.environ["APPLIANCE_ENV_FILE"])
    env_file.write_text("\n".join(lines) + "\n")
    try:
        load_settings()
    except ConfigError as exc:
        _assert_config_error(exc)
    finally:
        env_file.write_text("")


HEALTH_VARIABLES = [
    "APPLIANCE_BROKER_URL",
    "APPLIANCE_QUEUES",
    "APPLIANCE_WORKER_GROUPS",
    "APPLIANCE_VISIBILITY_TIMEOUT",
    "APPLIANCE_TASK_TIME_LIMIT",
    "APPLIANCE_HEALTH_EXPECT_GROUPS",
    "APPLIANCE_HEALTH_EXPECT_BEAT",
    "APPLIANCE_HEALTH_LATENCY_MS_WARN",
    "APPLIANCE_HEALTH_QUEUE_AGE_CRIT",
    "APPLIANCE_DATABASE_URL",
]


@FUZZ_SETTINGS
@given(
    values=st.dictionaries(
        st.sampled_from(HEALTH_VARIABLES), SETTING_VALUES, min_size=1, max_size=3
    )
)
def test_the_health_checks_settings_reader_parses_or_fails_with_one_line(
    values: dict[str, str],
) -> None:
    with _env(values):
        try:
            load_health_config()
        except ConfigError as exc:
            _assert_config_error(exc)


# The health check's Redis reply parser -----------------------------------------------------


class _Replies:
    """Stands in for a socket: swallows commands; the replies come from a byte string."""

    def sendall(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _resp(replies: bytes) -> Resp:
    conn = Resp.__new__(Resp)
    conn._sock = _Replies()  # type: ignore[assignment]
    conn._file = io.BufferedReader(io.BytesIO(replies))  # type: ignore[assignment]
    conn._timeout = 1.0
    return conn


RESP_BYTES = st.one_of(
    st.binary(max_size=60),
    st.lists(
        st.sampled_from(
            [b"+OK\r\n", b"-ERR x\r\n", b":12\r\n", b"$3\r\nabc\r\n", b"*2\r\n", b"$-1\r\n"]
        )
        | st.binary(max_size=8),
        max_size=8,
    ).map(b"".join),
    st.integers(-(2**40), 2**40).map(lambda n: b"$%d\r\n" % n),
    st.integers(-(2**40), 2**40).map(lambda n: b"*%d\r\n" % n),
)


@FUZZ
@given(replies=RESP_BYTES)
def test_resp_parser_returns_or_raises_its_own_errors(replies: bytes) -> None:
    with contextlib.suppress(RespConnectionError, RespError):
        _resp(replies).pipeline([["PING"], ["INFO"]])


def test_a_huge_bulk_length_is_refused_without_allocating_it() -> None:
    # A garbage server saying "$99999999999": the parser must not try to read 100 GB.
    with pytest.raises(RespConnectionError, match="not a Redis reply"):
        _resp(b"$99999999999\r\nabc").call("PING")

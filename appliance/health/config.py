"""What the health check needs to know, read without pydantic (see appliance.config.envsource).

`appliance config check` stays the authority on validity; this reader only parses the
few values health uses and reports a bad one as the checker's own failure (UNKNOWN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from appliance.config.envsource import (
    BrokerOrigin,
    raw_values,
    resolve_broker,
    split_list,
    split_mapping,
    state_dir_of,
    url_problem,
)
from appliance.core import constants as C
from appliance.errors import ConfigError

# name -> (warning, critical, unit, what it measures); env APPLIANCE_HEALTH_<NAME>_WARN/_CRIT.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "latency_ms": (50, 500),  # Redis PING round trip
    "memory_pct": (80, 90),  # used_memory / maxmemory
    "queue_depth": (1000, 10000),  # messages waiting in one queue (all priorities)
    "queue_age": (300, 1800),  # seconds the oldest waiting message has waited
    "unacked_age": (0, 0),  # seconds; 0 = half / 90 % of the visibility timeout
    "failure_pct": (5, 25),  # failed / finished tasks over the workers' recent window
    "beat_age": (60, 120),  # seconds since the beat leader's last tick
    "pidbox_orphans": (10, 100),  # reply keys of remote-control calls that never expire
}


@dataclass(frozen=True)
class HealthConfig:
    """The settings the checks use."""

    broker_url: str
    queues: list[str]
    worker_groups: dict[str, list[str]]
    expected_groups: list[str]
    visibility_timeout: int
    task_time_limit: int
    expect_beat: bool
    database_url: str
    thresholds: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The master name the sentinels monitor, for a sentinel:// broker URL.
    sentinel_master: str | None = None
    # Where broker_url came from (a message on a failure points there); None: given.
    broker_origin: BrokerOrigin | None = None

    def threshold(self, name: str) -> tuple[float, float]:
        return self.thresholds[name]


def _int(values: dict[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"invalid {name}={raw!r}: not an integer; fix: correct it") from None


def _number(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"invalid {name}={raw!r}: not a number; fix: correct it") from None


def load_health_config(
    overrides: dict[str, tuple[float | None, float | None]] | None = None,
) -> HealthConfig:
    """Read the health check's settings from the same sources as the appliance."""
    values = raw_values()
    state_dir = state_dir_of(values)
    broker, origin = resolve_broker(values)
    try:
        urlsplit(broker)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 host
        raise ConfigError(
            f"invalid APPLIANCE_BROKER_URL: not a URL ({exc}); fix: use a Redis URL"
        ) from None
    problem = url_problem(broker)
    if problem:
        where = (
            origin.source
            if origin.kind == "setting"
            else f"broker URL in `appliance up`'s state file {origin.source}"
        )
        raise ConfigError(
            f"invalid {where}: {problem}; fix: use a URL like redis://:PASSWORD@127.0.0.1:6379/0"
        )
    if urlsplit(broker).scheme not in ("redis", "rediss", "unix", "redis+socket", "sentinel"):
        raise ConfigError(
            f"invalid APPLIANCE_BROKER_URL: health reads redis://, rediss://, sentinel:// or "
            f"unix sockets, not {urlsplit(broker).scheme or 'nonsense'}://; fix: use a Redis URL"
        )
    sentinel_master = values.get("APPLIANCE_REDIS_SENTINEL_MASTER") or None
    if urlsplit(broker).scheme == "sentinel" and not sentinel_master:
        raise ConfigError(
            "invalid APPLIANCE_REDIS_SENTINEL_MASTER: APPLIANCE_BROKER_URL uses Sentinel but "
            "no master name is set; fix: set it to the name the sentinels monitor"
        )
    try:
        queues = split_list(values.get("APPLIANCE_QUEUES") or ",".join(C.DEFAULT_QUEUES))
        groups_raw = split_mapping(values.get("APPLIANCE_WORKER_GROUPS") or C.DEFAULT_WORKER_GROUPS)
    except ValueError as exc:
        raise ConfigError(
            f"invalid APPLIANCE_WORKER_GROUPS: {exc}; fix: use GROUP=Q1,Q2;GROUP=Q3"
        ) from None
    groups = {name: split_list(qs) for name, qs in groups_raw.items()}
    expected = split_list(values.get("APPLIANCE_HEALTH_EXPECT_GROUPS") or ",".join(groups))
    visibility = _int(values, "APPLIANCE_VISIBILITY_TIMEOUT", C.DEFAULT_VISIBILITY_TIMEOUT)
    thresholds: dict[str, tuple[float, float]] = {}
    for name, (warn, crit) in DEFAULT_THRESHOLDS.items():
        key = f"APPLIANCE_HEALTH_{name.upper()}"
        if f"{key}_WARN" in values:
            warn = _number(values[f"{key}_WARN"], f"{key}_WARN")
        if f"{key}_CRIT" in values:
            crit = _number(values[f"{key}_CRIT"], f"{key}_CRIT")
        flag_warn, flag_crit = (overrides or {}).get(name, (None, None))
        thresholds[name] = (
            flag_warn if flag_warn is not None else warn,
            flag_crit if flag_crit is not None else crit,
        )
    if thresholds["unacked_age"] == (0, 0):
        thresholds["unacked_age"] = (visibility * 0.5, visibility * 0.9)
    database = values.get("APPLIANCE_DATABASE_URL") or f"sqlite:///{state_dir / C.SQLITE_FILE}"
    return HealthConfig(
        broker_url=broker,
        queues=queues,
        worker_groups=groups,
        expected_groups=expected,
        visibility_timeout=visibility,
        task_time_limit=_int(values, "APPLIANCE_TASK_TIME_LIMIT", C.DEFAULT_TIME_LIMIT),
        expect_beat=(
            values.get("APPLIANCE_HEALTH_EXPECT_BEAT", "true").lower()
            not in ("0", "false", "no", "off")
        ),
        database_url=database,
        thresholds=thresholds,
        sentinel_master=sentinel_master,
        broker_origin=origin,
    )

"""The appliance's settings: one typed object from `APPLIANCE_*` variables and an env file.

Every command loads it through :func:`get_settings`, which fails fast with a
:class:`~appliance.errors.ConfigError` naming the variable, the problem and the fix.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from appliance.config.envsource import (
    default_state_dir,
    embedded_broker,
    env_file_path,
    setting_origin,
    split_list,
    split_mapping,
    url_problem,
)
from appliance.core import constants as C
from appliance.core.text import mask_url
from appliance.errors import ConfigError

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_BROKER_SCHEMES = ("redis", "rediss", "sentinel", "redis+socket")
_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")

# What to tell the operator for each setting, appended to the validation message.
_FIXES: dict[str, str] = {
    "broker_url": "use a URL like redis://:PASSWORD@127.0.0.1:6379/0",
    "result_backend": "use a URL like redis://:PASSWORD@127.0.0.1:6379/1",
    "database_url": "use sqlite:////var/lib/appliance/appliance.db or postgresql://USER:PW@HOST/DB",
    "queues": "use a comma list of names made of letters, digits, '.', '_' or '-'",
    "worker_groups": "use GROUP=QUEUE,QUEUE;GROUP=QUEUE with queues from APPLIANCE_QUEUES",
    "routes": "use PATTERN=QUEUE;PATTERN=QUEUE (e.g. reports.*=low) with queues from "
    "APPLIANCE_QUEUES",
    "timezone": "use an IANA name such as UTC or Europe/Berlin",
    "log_level": "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "task_events": "use true or false",
    "redis_sentinel_master": "set it to the name the sentinels monitor (sentinel monitor NAME ...)",
}


class Settings(BaseSettings):
    """Effective configuration of one appliance process."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        populate_by_name=True,
    )

    broker_url: str = Field(
        C.DEFAULT_BROKER_URL,
        validation_alias=AliasChoices("APPLIANCE_BROKER_URL", "CELERY_BROKER_URL"),
    )
    result_backend: str | None = Field(
        None, validation_alias=AliasChoices("APPLIANCE_RESULT_BACKEND", "CELERY_RESULT_BACKEND")
    )
    database_url: str | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    task_modules: Annotated[list[str], NoDecode] = []
    queues: Annotated[list[str], NoDecode] = list(C.DEFAULT_QUEUES)
    default_queue: str = C.DEFAULT_QUEUE
    worker_groups: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=lambda: {"default": list(C.DEFAULT_QUEUES)}
    )
    routes: Annotated[dict[str, str], NoDecode] = {}
    task_soft_time_limit: int = Field(C.DEFAULT_SOFT_TIME_LIMIT, gt=0)
    task_time_limit: int = Field(C.DEFAULT_TIME_LIMIT, gt=0)
    visibility_timeout: int = Field(C.DEFAULT_VISIBILITY_TIMEOUT, gt=0)
    max_tasks_per_child: int = Field(C.DEFAULT_MAX_TASKS_PER_CHILD, ge=0)
    max_memory_per_child: int = Field(C.DEFAULT_MAX_MEMORY_PER_CHILD_KIB, ge=0)
    # Times a task may lose its pool child (SIGKILL, sys.exit...) and be requeued before
    # it is dead-lettered instead (appliance/worker/lost.py); 0 = requeue forever.
    max_worker_lost: int = Field(3, ge=0)
    record_retention_days: int = Field(C.DEFAULT_RECORD_RETENTION_DAYS, gt=0)
    timezone: str = "UTC"
    concurrency: int | None = Field(None, gt=0)
    # consumers (the default): every process consumes and runs its tasks itself under a
    # supervising parent (appliance/worker/consumers/supervisor.py), about twice
    # prefork's drain rate of short tasks; prefork: Celery's main process hands each task
    # to a pool child (appliance/worker/prefork/pool.py).
    worker_topology: Literal["prefork", "consumers"] = "consumers"
    # Messages each pool process reserves ahead (acks late: they stay in Redis's unacked
    # set until done, so a dead worker's reserve comes back). 1 suits long tasks.
    prefetch_multiplier: int = Field(1, gt=0)
    log_level: str = "INFO"
    records_enabled: bool = True
    # Task events (task-sent by publishers, task-received/started/succeeded/... by workers):
    # a publish per state change, for Flower and `celery events`. Off: workers still send
    # their worker-online/heartbeat/offline events, and `celery control enable_events`
    # turns task events on at run time (docs/operations.md, Monitoring with Flower).
    task_events: bool = False
    db_auto_upgrade: bool = True
    beat_lease_ttl: int = Field(C.DEFAULT_BEAT_LEASE_TTL, gt=0)
    # Seconds a record must have been PENDING before the reconciler looks for its message
    # (appliance/recovery/reconcile.py); well above the time a publish takes.
    reconcile_min_age: int = Field(300, gt=0)
    # Largest JSON of one task's args + kwargs that submit accepts (0 = no cap): a huge
    # payload sits in Redis memory (a noeviction Redis then refuses every write), in the
    # record row and in each worker's prefetch; pass a reference (path, URL, id) instead.
    max_payload_bytes: int = Field(1 << 20, ge=0)
    # The master name the sentinels monitor; needed (and only used) with sentinel:// URLs.
    redis_sentinel_master: str | None = None

    @field_validator("task_modules", "queues", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> Any:
        return split_mapping(value)

    @field_validator("worker_groups", mode="before")
    @classmethod
    def _groups(cls, value: Any) -> Any:
        mapping = split_mapping(value)
        if isinstance(mapping, dict):
            return {k: split_list(v) for k, v in mapping.items()}
        return mapping

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = urlsplit(value).scheme
        if scheme not in _BROKER_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(_BROKER_SCHEMES)}")
        if scheme in ("redis", "rediss") and not urlsplit(value).hostname:
            raise ValueError("the URL has no host")
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = urlsplit(value).scheme.split("+")[0]
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"unknown log level {value!r}")
        return level

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue is needed")
        for name in value:
            if not _QUEUE_NAME.match(name):
                raise ValueError(f"bad queue name {name!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        known = set(self.queues)
        if self.default_queue not in known:
            raise _CrossFieldError(
                "default_queue",
                f"{self.default_queue!r} is not in APPLIANCE_QUEUES",
                "add it to APPLIANCE_QUEUES or pick one of them",
            )
        for group, queues in self.worker_groups.items():
            if not _QUEUE_NAME.match(group):
                raise _CrossFieldError("worker_groups", f"bad group name {group!r}")
            unknown = [q for q in queues if q not in known] or ([] if queues else ["(none)"])
            if unknown:
                raise _CrossFieldError(
                    "worker_groups", f"group {group!r} names unknown queue(s) {unknown}"
                )
        for pattern, queue in self.routes.items():
            if queue not in known:
                raise _CrossFieldError("routes", f"route {pattern!r} names unknown queue {queue!r}")
        sentinel = [
            var
            for var, url in (
                ("APPLIANCE_BROKER_URL", self.broker_url),
                ("APPLIANCE_RESULT_BACKEND", self.result_backend),
            )
            if url and urlsplit(url).scheme == "sentinel"
        ]
        if sentinel and not self.redis_sentinel_master:
            raise _CrossFieldError(
                "redis_sentinel_master",
                f"{' and '.join(sentinel)} use Sentinel but no master name is set",
            )
        if self.task_soft_time_limit > self.task_time_limit:
            raise _CrossFieldError(
                "task_soft_time_limit",
                f"{self.task_soft_time_limit}s is above the hard limit {self.task_time_limit}s",
                "set APPLIANCE_TASK_SOFT_TIME_LIMIT below APPLIANCE_TASK_TIME_LIMIT",
            )
        if self.visibility_timeout <= self.task_time_limit:
            raise _CrossFieldError(
                "visibility_timeout",
                f"{self.visibility_timeout}s is not longer than the hard time limit "
                f"{self.task_time_limit}s, so Redis would redeliver tasks that are still running",
                "raise APPLIANCE_VISIBILITY_TIMEOUT above APPLIANCE_TASK_TIME_LIMIT",
            )
        return self

    # Derived values ------------------------------------------------------------------

    @property
    def effective_result_backend(self) -> str:
        """The result backend URL: explicit, else database 1 of the broker's Redis."""
        if self.result_backend:
            return self.result_backend
        parts = urlsplit(self.broker_url)
        if parts.scheme in ("redis", "rediss"):
            return urlunsplit(parts._replace(path=f"/{C.DEFAULT_RESULT_DB}"))
        if parts.scheme == "sentinel":  # the same database on every sentinel item
            return ";".join(
                urlunsplit(urlsplit(item.strip())._replace(path=f"/{C.DEFAULT_RESULT_DB}"))
                for item in self.broker_url.split(";")
                if item.strip()
            )
        return self.broker_url

    @property
    def effective_database_url(self) -> str:
        """The task-record database URL: explicit, else SQLite in the state dir."""
        return self.database_url or f"sqlite:///{self.state_dir / C.SQLITE_FILE}"

    @property
    def records_url(self) -> str | None:
        """Where task records are written, or None when records are switched off."""
        return self.effective_database_url if self.records_enabled else None

    @property
    def stop_timeout(self) -> int:
        """Seconds a stop may take: the longest hard time limit plus a margin."""
        return self.task_time_limit + C.STOP_TIMEOUT_MARGIN_SECONDS

    def route_for(self, task_name: str) -> str | None:
        """The queue a task name is routed to by the configured patterns, if any."""
        for pattern, queue in self.routes.items():
            if fnmatch.fnmatchcase(task_name, pattern):
                return queue
        return None

    def public_dict(self) -> dict[str, Any]:
        """Effective settings as JSON-friendly data, with passwords masked."""
        data = self.model_dump(mode="json")
        data["result_backend"] = self.effective_result_backend
        data["database_url"] = self.effective_database_url
        for key in ("broker_url", "result_backend", "database_url"):
            data[key] = mask_url(data[key])
        return data


class _CrossFieldError(ValueError):
    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.field, self.problem, self.fix = field, problem, fix


def env_var(field: str) -> str:
    """The environment variable that sets *field*."""
    return f"APPLIANCE_{field.upper()}"


def _from_validation_error(exc: ValidationError) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _CrossFieldError):
        fix = ctx_error.fix or _FIXES.get(ctx_error.field, "correct the value")
        var = env_var(ctx_error.field)
        return ConfigError(f"invalid {var}{_origin(var)}: {ctx_error.problem}; fix: {fix}")
    loc = str(err["loc"][0]) if err["loc"] else "settings"
    field = loc.lower().removeprefix("appliance_").removeprefix("celery_")
    var = loc.upper() if loc.upper().startswith(("APPLIANCE_", "CELERY_")) else env_var(field)
    value = err.get("input")
    shown = mask_url(value) if isinstance(value, str) else value
    message = str(err["msg"]).removeprefix("Value error, ")
    fix = _FIXES.get(field, "correct the value or unset it to use the default")
    return ConfigError(f"invalid {var}={shown!r}{_origin(var)}: {message}; fix: {fix}")


def _origin(var: str) -> str:
    """`` (in env file PATH)`` or `` (in the environment)``: where to correct *var*."""
    try:
        where = setting_origin(var)
    except ConfigError:
        return ""
    return f" ({where.removeprefix(var + ' ')})" if where else ""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise ConfigError with one line on any problem."""
    try:
        settings = Settings(_env_file=env_file_path(), **overrides)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    if "broker_url" not in settings.model_fields_set:
        # A running `appliance up` on this state dir: talk to its private Redis.
        embedded = embedded_broker(settings.state_dir)
        if embedded:
            settings = settings.model_copy(update={"broker_url": embedded})
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()

"""Queue lists no worker group consumes: found from kombu's bindings, named with the fix."""

from __future__ import annotations

import fnmatch
from typing import Any

from appliance.core import keys
from appliance.health.config import HealthConfig
from appliance.health.queues import (
    binding_queue,
    check_unconsumed,
    consuming_groups,
    kombu_queues,
    unconsumed_message,
    unconsumed_queues,
)
from appliance.health.resp import RespError
from appliance.health.verdict import WARNING

SEP = keys.KOMBU_BINDING_SEP
QUEUES = ["default", "high", "low", "celery"]
GROUPS = {"default": ["default", "high", "low", "celery"]}


class FakeResp:
    """SCAN (two pages), SMEMBERS and LLEN over sets and lists; WRONGTYPE as Redis does."""

    def __init__(
        self, sets: dict[str, set[str]], lists: dict[str, int], other: tuple[str, ...] = ()
    ):
        self.sets, self.lists, self.other = sets, lists, other
        self.commands: list[str] = []

    def call(self, *args: Any) -> Any:
        return self.pipeline([list(args)])[0]

    def pipeline(self, commands: list[list[Any]]) -> list[Any]:
        replies = [self._one(*command) for command in commands]
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def _one(self, name: str, *args: Any) -> Any:
        self.commands.append(name)
        if name == "SCAN":
            assert name != "KEYS"
            names = sorted([*self.sets, *self.lists, *self.other])
            found = [n.encode() for n in names if fnmatch.fnmatchcase(n, args[2])]
            half = len(found) // 2
            return [b"7", found[:half]] if args[0] == b"0" else [b"0", found[half:]]
        key = args[0].decode() if isinstance(args[0], bytes) else args[0]  # SCAN gives bytes
        kind = {"SMEMBERS": self.sets, "LLEN": self.lists}[name]
        if key in kind:
            value = kind[key]
            return [m.encode() for m in value] if isinstance(value, set) else value
        if key in self.sets or key in self.lists or key in self.other:
            return RespError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return [] if name == "SMEMBERS" else 0


def _binding(queue: str, routing_key: str | None = None) -> str:
    return f"{routing_key or queue}{SEP}{SEP}{queue}"


def _cfg(queues: list[str] = QUEUES, groups: dict[str, list[str]] = GROUPS) -> HealthConfig:
    return HealthConfig(
        broker_url="redis://127.0.0.1:6379/0",
        queues=queues,
        worker_groups=groups,
        expected_groups=list(groups),
        visibility_timeout=3600,
        task_time_limit=360,
        expect_beat=False,
        database_url="sqlite://",
    )


def test_a_binding_member_names_its_queue() -> None:
    assert binding_queue(_binding("celery").encode()) == "celery"
    assert binding_queue(f"rk{SEP}*.x{SEP}reports") == "reports"
    assert binding_queue(b"garbage") is None
    assert binding_queue(f"a{SEP}b{SEP}") is None


def test_kombu_queues_skip_celerys_remote_control_and_events() -> None:
    conn = FakeResp(
        {
            "_kombu.binding.celery": {_binding("celery")},
            "_kombu.binding.reports": {_binding("reports"), _binding("reports2", "reports")},
            "_kombu.binding.celery.pidbox": {f"{SEP}{SEP}default@h.celery.pidbox"},
            "_kombu.binding.reply.celery.pidbox": {_binding("abc.reply.celery.pidbox")},
            "_kombu.binding.celeryev": {f"worker.#{SEP}{SEP}celeryev.1234"},
        },
        {"celery": 1},
    )
    assert kombu_queues(conn) == ["celery", "reports", "reports2"]  # type: ignore[arg-type]
    assert "KEYS" not in conn.commands


def test_groups_and_live_workers_consume() -> None:
    beats = [{"group": "adhoc", "queues": ["reports"]}, {"group": "default", "queues": "junk"}]
    consumers = consuming_groups({"default": ["default"], "b": ["default", "x"]}, beats)
    assert consumers == {"default": ["default", "b"], "x": ["b"], "reports": ["adhoc"]}


def test_only_non_empty_unconsumed_lists_are_reported_with_every_priority() -> None:
    conn = FakeResp(
        {
            "_kombu.binding.celery": {_binding("celery")},
            "_kombu.binding.reports": {_binding("reports")},
            "_kombu.binding.empty": {_binding("empty")},
            "_kombu.binding.adhoc": {_binding("adhoc")},
        },
        {"celery": 4, "reports": 10, f"reports{SEP}9": 2, "adhoc": 3, "high": 5},
    )
    beats = [{"group": "default", "queues": ["adhoc"]}]  # `appliance worker -Q adhoc`
    found = unconsumed_queues(conn, QUEUES, {"default": ["default", "low"]}, beats)  # type: ignore[arg-type]
    assert found == [
        {"queue": "high", "depth": 5, "by_priority": {0: 5, 3: 0, 6: 0, 9: 0}, "configured": True},
        {
            "queue": "celery",
            "depth": 4,
            "by_priority": {0: 4, 3: 0, 6: 0, 9: 0},
            "configured": True,
        },
        {
            "queue": "reports",
            "depth": 12,
            "by_priority": {0: 10, 3: 0, 6: 0, 9: 2},
            "configured": False,
        },
    ]


def test_a_key_of_another_type_is_skipped_not_fatal() -> None:
    conn = FakeResp(
        {"_kombu.binding.reports": {_binding("reports"), _binding("weird")}},
        {"reports": 2},
        other=("_kombu.binding.junk", "weird"),
    )
    found = unconsumed_queues(conn, QUEUES, GROUPS, [])  # type: ignore[arg-type]
    assert [(f["queue"], f["depth"]) for f in found] == [("reports", 2)]


def test_the_warning_names_the_queue_its_depth_and_the_settings_to_change() -> None:
    entry = {"queue": "reports", "depth": 12, "configured": False}
    assert unconsumed_message(entry, QUEUES, GROUPS) == (
        "queue 'reports' has 12 message(s) and no worker group consumes it; fix: add it to "
        "APPLIANCE_WORKER_GROUPS (e.g. default=default,high,low,celery,reports) and to "
        "APPLIANCE_QUEUES (default,high,low,celery,reports), then restart appliance-worker@default"
    )
    old_install = {"default": ["default", "high", "low"], "mail": ["mail"]}
    entry = {"queue": "celery", "depth": 1, "configured": True}
    assert unconsumed_message(entry, QUEUES, old_install) == (
        "queue 'celery' has 1 message(s) and no worker group consumes it; fix: add it to "
        "APPLIANCE_WORKER_GROUPS (e.g. default=default,high,low,celery), "
        "then restart appliance-worker@default"
    )
    assert "e.g. mail=mail,celery" in unconsumed_message(entry, QUEUES, {"mail": ["mail"]})


def test_health_warns_per_unconsumed_queue_and_is_silent_otherwise() -> None:
    bindings = {"_kombu.binding.celery": {_binding("celery")}}
    assert check_unconsumed(_cfg(), FakeResp(bindings, {"celery": 3}), []) == []  # type: ignore[arg-type]
    cfg = _cfg(groups={"default": ["default", "high", "low"]})
    (check,) = check_unconsumed(cfg, FakeResp(bindings, {"celery": 3}), [])  # type: ignore[arg-type]
    assert (check.name, check.status, check.value) == ("queue_celery_unconsumed", WARNING, 3)
    assert "fix: add it to APPLIANCE_WORKER_GROUPS" in check.message
    odd = {"_kombu.binding.x": {_binding("we'ird q")}}
    (check,) = check_unconsumed(_cfg(), FakeResp(odd, {"we'ird q": 1}), [])  # type: ignore[arg-type]
    assert check.name == "queue_we_ird_q_unconsumed"

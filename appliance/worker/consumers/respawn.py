"""Replacing a consumer that ended before running anything: after a growing pause, and not
for ever.

Such an end is a bad start (configuration, Redis refusing us, an unrecoverable error at
once): forking again at once would spin. After START_FAILURES_BEFORE_EXIT consumers in a
row fail to reach consuming, the unit stops and exits with their exit code, so that
systemd's ``Restart=on-failure`` applies (78 stays 78).
"""

from __future__ import annotations

from dataclasses import dataclass, field

START_FAILURES_BEFORE_EXIT = 5
RESPAWN_PAUSE_MAX_SECONDS = 10.0


@dataclass
class Respawns:
    """The consumers to fork again after a pause, and the count of bad starts in a row."""

    due: dict[int, float] = field(default_factory=dict)  # index -> when (monotonic)
    start_failures: int = 0
    quick_exits: int = 0
    last_code: int = 0

    def worked(self) -> None:
        """A consumer finished a task: the unit starts well."""
        self.start_failures = self.quick_exits = 0

    def consuming(self) -> None:
        self.start_failures = 0

    def ran_nothing(self, index: int, ready: bool, code: int, now: float) -> bool:
        """Consumer *index* ended (exit *code*) having run nothing, after reaching
        consuming or not (*ready*): fork it again after a pause. False: give up."""
        self.quick_exits += 1
        if not ready:
            self.start_failures += 1
            self.last_code = code if code > 0 else 1
        if self.gave_up:
            return False
        pause = min(RESPAWN_PAUSE_MAX_SECONDS, 0.25 * 2 ** min(self.quick_exits, 6))
        self.due[index] = now + pause
        return True

    @property
    def gave_up(self) -> bool:
        return self.start_failures >= START_FAILURES_BEFORE_EXIT

    def exit_code(self) -> int:
        """The unit's exit code: the failed starts' when it gave up, else 0."""
        return self.last_code if self.gave_up else 0

    def take_due(self, now: float) -> list[int]:
        """The consumers whose pause is over (no longer due)."""
        ready = [index for index, when in self.due.items() if when <= now]
        for index in ready:
            del self.due[index]
        return ready

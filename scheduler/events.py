"""What makes the daemon plan work. Plain data, produced by watchers, consumed by the planner."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StackChanged:
    """Components of one target's stack changed: {component: (old, new)}."""

    target: str
    diff: dict[str, tuple[str | None, str | None]]
    trigger: str = "stack-change"


@dataclass(frozen=True)
class Scheduled:
    """A nightly sweep (kind "scheduled") or one caught up at start (kind "catch-up")."""

    due: float
    kind: str = "scheduled"

    @property
    def trigger(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Manual:
    """`revalidator sweep`: every job, or one target's; `force` re-runs finished work."""

    target: str | None = None
    force: bool = False
    trigger: str = "manual"


@dataclass(frozen=True)
class ConfigChanged:
    """The config file changed: new or changed artifacts, suites or tolerances get new job keys."""

    reason: str = "config file changed"
    trigger: str = "config-change"


Event = StackChanged | Scheduled | Manual | ConfigChanged


@dataclass
class Plan:
    """The planner's answer to one event."""

    jobs: list = field(default_factory=list)
    skipped_known: int = 0  # jobs whose key already has a result (or is queued)

"""Time-based triggers on APScheduler 3: the stack poll and the nightly sweep (cron, UTC).

The poll only probes and enqueues. The nightly sweep gets a misfire grace of hours; a sweep
missed while the daemon was down is caught up at start, decided from the ledger's last
scheduled sweep rather than from a job store, so one daemon replica and its ledger are the
whole state.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from scheduler.config.schema import Schedule

UTC = dt.timezone.utc


def nightly_trigger(schedule: Schedule) -> CronTrigger:
    return CronTrigger.from_crontab(schedule.nightly, timezone="UTC")


def last_due(schedule: Schedule, now: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=8)) -> dt.datetime | None:
    """The most recent time the nightly sweep was due at or before `now` (within `horizon`)."""
    trigger = nightly_trigger(schedule)
    due, previous = trigger.get_next_fire_time(None, now - horizon), None
    while due is not None and due <= now:
        previous = due
        due = trigger.get_next_fire_time(due, due + dt.timedelta(seconds=1))
    return previous


def missed_sweep(schedule: Schedule, last_sweep: float | None, now: dt.datetime) -> dt.datetime | None:
    """The due time of a sweep to catch up at start, or None when the last one is recent enough.

    A ledger that never had a sweep is due one now: that is the daemon's first validation.
    """
    due = last_due(schedule, now)
    if last_sweep is None:
        return due or now
    if due is not None and last_sweep < due.timestamp():
        return due
    return None


def build_scheduler(schedule: Schedule, poll: Callable[[], None], nightly: Callable[[dt.datetime], None],
                    missed: Callable[[], None] = lambda: None) -> BackgroundScheduler:
    """A BackgroundScheduler with the poll (every interval, no pile-up) and the nightly sweep."""
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(lambda event: missed(), EVENT_JOB_MISSED)
    interval = schedule.poll_interval_seconds
    scheduler.add_job(poll, IntervalTrigger(seconds=interval, timezone=UTC), id="poll", replace_existing=True,
                      max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval)),
                      next_run_time=dt.datetime.now(UTC))
    trigger = nightly_trigger(schedule)
    scheduler.add_job(_nightly_now, trigger, args=[nightly], id="nightly", replace_existing=True, max_instances=1,
                      coalesce=True, misfire_grace_time=max(1, int(schedule.misfire_grace_seconds)))
    return scheduler


def _nightly_now(nightly: Callable[[dt.datetime], None]) -> None:
    nightly(dt.datetime.now(UTC))

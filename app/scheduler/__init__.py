"""The scheduler: an asyncio front to the single engine thread, with cancellation."""

from app.scheduler.scheduler import (
    Scheduler,
    SchedulerConfig,
    SchedulerFull,
    SchedulerObserver,
    SchedulerStopped,
    Submission,
)

__all__ = [
    "Scheduler",
    "SchedulerConfig",
    "SchedulerFull",
    "SchedulerObserver",
    "SchedulerStopped",
    "Submission",
]

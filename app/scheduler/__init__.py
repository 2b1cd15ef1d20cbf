"""The scheduler: an asyncio front to the single engine thread, with cancellation."""

from app.scheduler.scheduler import (
    Scheduler,
    SchedulerConfig,
    SchedulerFull,
    SchedulerStopped,
    Submission,
)

__all__ = ["Scheduler", "SchedulerConfig", "SchedulerFull", "SchedulerStopped", "Submission"]

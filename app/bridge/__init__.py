"""The engine bridge: an asyncio front to the single engine thread, with admission and
cancellation."""

from app.bridge.bridge import (
    BridgeConfig,
    BridgeObserver,
    BridgeStats,
    BridgeStopped,
    EngineBridge,
    Overloaded,
)
from app.bridge.submission import Failure, Submission

__all__ = [
    "BridgeConfig",
    "BridgeObserver",
    "BridgeStats",
    "BridgeStopped",
    "EngineBridge",
    "Failure",
    "Overloaded",
    "Submission",
]

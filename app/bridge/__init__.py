"""The engine bridge: an asyncio front to the single engine thread, with cancellation."""

from app.bridge.bridge import (
    BridgeConfig,
    BridgeObserver,
    BridgeStopped,
    EngineBridge,
    Overloaded,
    Submission,
)

__all__ = [
    "BridgeConfig",
    "BridgeObserver",
    "BridgeStopped",
    "EngineBridge",
    "Overloaded",
    "Submission",
]

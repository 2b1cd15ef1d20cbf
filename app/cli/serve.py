"""`softserve serve`: uvicorn with a graceful drain on SIGTERM.

The first SIGTERM (or Ctrl-C) stops admitting (503 for new requests, /health 503 so a load
balancer moves away), lets running requests finish for up to `drain_s`, then exits 0. A second
signal exits at once.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn

from app.api.app import create_app
from app.api.state import Runtime
from app.settings import Settings

log = logging.getLogger("softserve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        gate = self.runtime.gate
        if gate.draining:  # a second signal: stop now
            self.force_exit = True
            self.should_exit = True
            return
        gate.draining = True
        log.info(
            "signal %d: draining %d running requests (up to %.0f s)",
            sig,
            gate.active,
            self.runtime.settings.drain_s,
        )
        threading.Thread(target=self._drain, name="softserve-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.runtime.settings.drain_s
        while self.runtime.gate.active > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.runtime.gate.active:
            log.warning("drain time over: %d requests cut", self.runtime.gate.active)
        self.should_exit = True


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config, app.state.runtime).run()
    return 0

"""Graceful shutdown of a serving process: SIGTERM drains first, then uvicorn stops.

A load balancer (HAProxy's health check, Kubernetes' readiness probe) takes a replica out of
rotation only once /readyz has failed for a while; a process that closed its socket at once
would refuse the requests routed to it meanwhile. So SIGTERM first turns /readyz to 503 and
keeps serving for `server.drain_s`; then uvicorn's own shutdown runs: it stops accepting,
finishes requests and streams in flight (up to `server.shutdown_timeout_s`), and the app's
lifespan flushes the spend log and releases the process's unsettled holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("rightsize.shutdown")

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


class Drain:
    """Whether this process is draining; set by SIGTERM once `install` has run."""

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.draining = False
        self._previous: _Handler = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Put the drain in front of the SIGTERM handler in place (uvicorn's, which stops the
        server); called on the serving loop, in the main thread, once uvicorn has set its own."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; uvicorn there did not capture them
        self._loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self.drain_s <= 0 or self._loop is None:
            # A second SIGTERM, or no drain asked for: straight to uvicorn's shutdown.
            self._stop(sig, frame)
            return
        self.draining = True
        log.info(
            "SIGTERM: /readyz reports draining; serving %.1f s more, then stopping", self.drain_s
        )
        self._loop.call_later(self.drain_s, self._stop, sig, None)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.draining = True
        previous = self._previous
        if callable(previous):
            previous(sig, frame)
        elif previous != signal.SIG_IGN:
            # No Python handler to pass it to: end the loop's run the way SIGTERM would.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(sig)

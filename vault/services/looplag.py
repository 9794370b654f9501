"""Event-loop lag: how late the loop runs a timer, the delay every request on it shares.

The daemon serves every connection from one event loop, so anything that holds the loop (a
long synchronous scan, a CPU-bound step) delays all requests at once, including ``/healthz``.
``LoopLagProbe.sample`` asks for a short sleep and measures how late it ends; the supervisor runs
it periodically and each sample goes to the ``imagevault_event_loop_lag_seconds`` histogram
(no labels: a lag has no owner, and nothing personal can be attached to it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Seconds the probe sleeps per sample, and between samples: ~3 samples a second, each a single
# timer callback, so the probe itself costs nothing measurable.
SAMPLE_SLEEP = 0.05
SAMPLE_INTERVAL = 0.25


class LoopLagProbe:
    def __init__(self, observe: Callable[[float], None], *, sleep: float = SAMPLE_SLEEP) -> None:
        self._observe = observe
        self._sleep = sleep

    async def sample(self) -> float:
        """One sample: seconds the loop ran a ``sleep``-second timer late (0 when on time)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self._sleep)
        # asyncio may run a timer up to its clock resolution early: clamp to 0.
        lag = max(0.0, loop.time() - started - self._sleep)
        self._observe(lag)
        return lag

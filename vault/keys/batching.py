"""Micro-batching: gather concurrent single requests into one call of a batched function.

A KMS round trip costs about the same for one item as for 256, so many small requests arriving
together (64 uploads each wrapping one data key) should become one request. ``MicroBatcher``
does that for any async ``flush(items) -> results`` function::

    batcher = MicroBatcher(flush, max_batch=256, delay=0.003, max_in_flight=4)
    result = await batcher.submit(item)            # one caller, one item
    results = await batcher.submit_many(items)     # one caller, many items (results in order)

Rules:

- Items wait at most ``delay`` seconds after the first item of a batch arrived, or until
  ``max_batch`` items are waiting, whichever comes first; then they are flushed in ONE call.
  When no flush is in flight (``flush_when_idle``, the default) the batch goes out on the next
  event-loop iteration instead: everything submitted in the same iteration (``gather`` of 64
  calls, or 64 callers woken by the previous batch) still shares the call, and a lone request
  on an idle batcher does not pay ``delay`` in latency. Items arriving while flushes are in
  flight wait for ``delay`` and so fill the next batch (group commit).
- At most ``max_in_flight`` flushes run at once. While all slots are busy, items keep
  accumulating and go out in the next free slot (as full batches as possible), so a slow KMS
  gets fewer, larger requests instead of a growing queue of small ones.
- ``flush`` must return one result per item, in order. A result that is an ``Exception``
  instance is raised to the caller of that item only; the other callers get their results.
- If ``flush`` itself raises, every item of that batch fails with that exception.
- A caller that is cancelled while waiting does not cancel the flush (other callers share it);
  its item is dropped from the batch if the flush has not started yet.

Everything runs on the event loop that calls ``submit``; no background task lives between
batches, so one batcher can outlive an event loop (as in tests) without holding on to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "BatcherStats"]

T = TypeVar("T")
R = TypeVar("R")


class BatcherStats:
    """Counters for metrics and tests: how many flushes, of how many items."""

    __slots__ = ("flushes", "items", "largest_batch", "failed_flushes")

    def __init__(self) -> None:
        self.flushes = 0
        self.items = 0
        self.largest_batch = 0
        self.failed_flushes = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent ``submit(item)`` calls into batched ``flush(items)`` calls."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 256,
        delay: float = 0.003,
        max_in_flight: int = 4,
        closed_error: Callable[[], BaseException] = lambda: RuntimeError("batcher is closed"),
        flush_when_idle: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._flush = flush
        self.max_batch = max_batch
        self.delay = delay
        self.max_in_flight = max_in_flight
        self._closed_error = closed_error
        self.flush_when_idle = flush_when_idle
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = BatcherStats()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, item: T) -> R:
        """Queue one item; return its result or raise its exception."""
        return await self._enqueue([item])[0]

    async def submit_many(self, items: Sequence[T]) -> list[R | BaseException]:
        """Queue several items at once; results (or exception instances) in the same order.

        Items may be split over several flushes when there are more than ``max_batch``.
        """
        if not items:
            return []
        futures = self._enqueue(list(items))
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def _enqueue(self, items: list[T]) -> list[asyncio.Future[R]]:
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._pending.append((item, future))
            futures.append(future)
        if len(self._pending) >= self.max_batch:
            self._dispatch()
        elif self._timer is None:
            # Nothing in flight: nobody else is likely to be waiting for a batch to fill, so
            # flush on the next loop iteration (items submitted in this iteration still join).
            # Otherwise wait up to ``delay`` for more items to share the next call.
            idle = self.flush_when_idle and self._in_flight == 0
            self._timer = loop.call_later(0 if idle else self.delay, self._on_timer)
        return futures

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        """Start as many flushes as there are free slots; leftovers wait for a slot."""
        while self._pending and self._in_flight < self.max_in_flight:
            batch = [(i, f) for i, f in self._pending[: self.max_batch] if not f.done()]
            del self._pending[: self.max_batch]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        self.stats.flushes += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        try:
            try:
                results = list(await self._flush(items))
                if len(results) != len(items):
                    raise RuntimeError(
                        f"flush returned {len(results)} results for {len(items)} items"
                    )
            except BaseException as exc:  # noqa: BLE001 - fanned out to every caller
                self.stats.failed_flushes += 1
                cancelled = isinstance(exc, asyncio.CancelledError)
                for _, future in batch:
                    if not future.done():
                        if cancelled:
                            future.cancel()
                        else:
                            future.set_exception(exc)
                if cancelled:
                    raise
                return
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue  # the caller went away
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            # Items that piled up while every slot was busy have waited long enough already:
            # send them now unless a fresh delay window is still open for them.
            if self._pending and not self._closed and (
                self._timer is None or len(self._pending) >= self.max_batch
            ):
                self._dispatch()

    async def close(self) -> None:
        """Fail waiting items with ``closed_error``, wait for flushes in flight to finish."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(self._closed_error())
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

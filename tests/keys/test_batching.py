"""MicroBatcher: coalescing, fan-out of results and errors, bounded concurrency.

The flush functions here are plain fakes: the batcher is generic and knows nothing of the KMS.
"""

from __future__ import annotations

import asyncio

import pytest

from vault.keys.batching import MicroBatcher


class Recorder:
    """A flush that records every batch and answers item * 10 (or an error for negatives)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.pause = pause
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.running -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_concurrent_submits_are_flushed_in_one_call():
    flush = Recorder()
    batcher = MicroBatcher(flush, max_batch=256, delay=0.01)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(64)))
    assert results == [i * 10 for i in range(64)]
    assert flush.batches == [list(range(64))]


async def test_full_batch_is_flushed_without_waiting_for_the_delay():
    flush = Recorder()
    batcher = MicroBatcher(flush, max_batch=4, delay=60)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), 5)
    assert results == [i * 10 for i in range(8)]
    assert flush.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_an_exception_result_is_raised_only_to_its_own_caller():
    batcher = MicroBatcher(Recorder(), delay=0.005)
    results = await asyncio.gather(
        batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
    )
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -1"


async def test_a_failing_flush_fails_every_item_of_that_batch_only():
    calls = 0

    async def flush(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return [i for i in items]

    batcher = MicroBatcher(flush, max_batch=2, delay=0.005, max_in_flight=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ConnectionError, ConnectionError]
    assert results[2:] == [2, 3]


async def test_wrong_number_of_results_fails_the_batch():
    async def flush(items):
        return items[:-1]

    batcher = MicroBatcher(flush, delay=0)
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))


async def test_flushes_in_flight_are_bounded_and_waiting_items_coalesce():
    flush = Recorder(pause=0.05)
    batcher = MicroBatcher(flush, max_batch=10, delay=0.001, max_in_flight=2)
    tasks = []
    for i in range(100):
        tasks.append(asyncio.ensure_future(batcher.submit(i)))
        if i % 5 == 4:
            await asyncio.sleep(0.002)
    results = await asyncio.gather(*tasks)
    assert results == [i * 10 for i in range(100)]
    assert flush.most_running == 2
    # While both slots were busy the items piled up and went out as full batches.
    assert len(flush.batches) < 20
    assert sorted(i for batch in flush.batches for i in batch) == list(range(100))


async def test_submit_many_keeps_order_and_returns_exceptions_in_place():
    flush = Recorder()
    batcher = MicroBatcher(flush, max_batch=3, delay=0.001)
    results = await batcher.submit_many([1, -2, 3, 4, -5])
    assert results[0] == 10 and results[2] == 30 and results[3] == 40
    assert isinstance(results[1], ValueError) and isinstance(results[4], ValueError)
    assert await batcher.submit_many([]) == []


async def test_a_cancelled_caller_does_not_disturb_the_others():
    flush = Recorder()
    batcher = MicroBatcher(flush, delay=0.02)
    doomed = asyncio.ensure_future(batcher.submit(1))
    kept = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == 20
    assert flush.batches == [[2]]  # the cancelled item was dropped before the flush


async def test_close_fails_waiting_items_and_refuses_new_ones():
    batcher = MicroBatcher(Recorder(), delay=60, closed_error=lambda: LookupError("closed"))
    waiting = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    await batcher.close()
    with pytest.raises(LookupError):
        await waiting
    with pytest.raises(LookupError):
        await batcher.submit(2)


def test_batcher_works_across_event_loops():
    flush = Recorder()
    batcher = MicroBatcher(flush, delay=0.001)
    assert asyncio.run(batcher.submit(1)) == 10
    assert asyncio.run(batcher.submit(2)) == 20


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_in_flight=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), delay=-1)


async def test_a_lone_item_on_an_idle_batcher_does_not_wait_for_the_delay():
    flush = Recorder()
    batcher = MicroBatcher(flush, delay=60)
    assert await asyncio.wait_for(batcher.submit(7), 5) == 70


async def test_without_flush_when_idle_a_lone_item_waits_for_the_delay():
    flush = Recorder()
    batcher = MicroBatcher(flush, delay=0.2, flush_when_idle=False)
    started = asyncio.get_running_loop().time()
    assert await batcher.submit(7) == 70
    assert asyncio.get_running_loop().time() - started >= 0.19


async def test_items_arriving_during_a_flush_wait_and_share_the_next_call():
    flush = Recorder(pause=0.05)
    batcher = MicroBatcher(flush, delay=0.02, max_in_flight=4)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first flush is now in flight
    later = []
    for i in range(1, 6):
        later.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0.002)
    await asyncio.gather(first, *later)
    assert flush.batches == [[0], [1, 2, 3, 4, 5]]

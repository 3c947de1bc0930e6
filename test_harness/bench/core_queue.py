"""Benchmark (not a test): PoolQueue offer+dispatch and cancel at steady queue depths,
against a baseline measured in the same run — a heapq + dict queue with no policies
(no tenants, lanes, deadlines or positions).

    python -m test_harness.bench.core_queue [--depths 1000 10000 100000] [--ops 50000]

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator_core.model import Priority, Task
from orchestrator_core.queue import ANY_LANE, PoolQueue, QueuePolicy


class BaselineQueue:
    """The least a priority queue can do: heap of (priority, seq), dict by id, lazy cancel."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, str]] = []
        self.tasks: dict[str, Task] = {}
        self.seq = 0

    def offer(self, task: Task) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (task.priority.rank, self.seq, task.id))
        self.tasks[task.id] = task

    def take(self) -> Task | None:
        while self.heap:
            _, _, tid = heapq.heappop(self.heap)
            task = self.tasks.pop(tid, None)
            if task is not None:
                return task
        return None

    def cancel(self, tid: str) -> None:
        self.tasks.pop(tid, None)


@dataclass
class Result:
    name: str
    depth: int
    ns_per_op: float


def _tasks(n: int, start: int) -> list[Task]:
    prios = (Priority.INTERACTIVE, Priority.BATCH)
    return [Task(f"t{i}", "p", priority=prios[i % 2]) for i in range(start, start + n)]


def bench_pairs(depth: int, ops: int, make: Callable[[], object], offer, take) -> float:
    q = make()
    for t in _tasks(depth, 0):
        offer(q, t)
    fresh = _tasks(ops, depth)
    t0 = time.perf_counter_ns()
    for t in fresh:
        offer(q, t)
        take(q)
    return (time.perf_counter_ns() - t0) / ops


def bench_cancel(depth: int, ops: int, make: Callable[[], object], offer, cancel) -> float:
    q = make()
    for t in _tasks(depth, 0):
        offer(q, t)
    rng = random.Random(7)
    victims = rng.sample(range(depth), min(ops, depth))
    fresh = _tasks(len(victims), depth)
    t0 = time.perf_counter_ns()
    for v, t in zip(victims, fresh, strict=True):
        cancel(q, f"t{v}")
        offer(q, t)  # keep the depth steady
    return (time.perf_counter_ns() - t0) / len(victims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depths", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--ops", type=int, default=50_000)
    args = ap.parse_args()

    def pool() -> PoolQueue:
        return PoolQueue(10**9, QueuePolicy.DROP_LRU)

    lanes = (ANY_LANE,)
    print("| operation | depth | orchestrator_core ns/op | baseline ns/op | ratio | ops/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for depth in args.depths:
        ours = bench_pairs(
            depth, args.ops, pool, PoolQueue.offer, lambda q, lanes=lanes: q.take_next(lanes, 0.0)
        )
        base = bench_pairs(depth, args.ops, BaselineQueue, BaselineQueue.offer, BaselineQueue.take)
        print(
            f"| offer+dispatch | {depth:,} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f} "
            f"| {1e9 / ours:,.0f} |"
        )
        ours = bench_cancel(depth, args.ops, pool, PoolQueue.offer, PoolQueue.cancel)
        base = bench_cancel(
            depth, args.ops, BaselineQueue, BaselineQueue.offer, BaselineQueue.cancel
        )
        print(
            f"| cancel+offer | {depth:,} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f} "
            f"| {1e9 / ours:,.0f} |"
        )


if __name__ == "__main__":
    main()

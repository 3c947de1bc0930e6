"""Weighted fair queueing across tenants within one priority class.

Start-time fair queueing with integer virtual time: each tenant keeps a FIFO of its tasks
and a `next_tag`; the task with the smallest `(tag, tenant ordinal)` is dispatched next and
its tenant's tag advances by `cost = base // weight`. A tenant that becomes backlogged
starts at `max(its old finish tag, the class's virtual clock)`, so it neither loses its
turn nor banks credit while idle. With equal weights this is round-robin; with one tenant
it is plain FIFO. Integers keep the order exact (no float ties) and reproducible.

push and pop are O(log T) for T backlogged tenants; remove and rank are O(log n);
`position` is O(T + log n).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from math import lcm

from sortedcontainers import SortedList

from orchestrator_core.model import Task


class _RankedFifo:
    """A FIFO of increasing arrival numbers with O(1) append and pop-front, O(log n) removal
    from the middle and O(log n) rank: an append-only list with a head index, plus the
    (rare) holes left by mid-queue removals."""

    __slots__ = ("_head", "_holes", "_seqs", "tasks")

    def __init__(self) -> None:
        self._seqs: list[int] = []
        self._head = 0
        self._holes: SortedList = SortedList()
        self.tasks: dict[int, Task] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def append(self, task: Task) -> None:
        self._seqs.append(task.seq)
        self.tasks[task.seq] = task

    def _skip_holes(self) -> None:
        seqs, holes = self._seqs, self._holes
        while holes and seqs[self._head] == holes[0]:
            holes.pop(0)
            self._head += 1
        if self._head > 64 and self._head * 2 > len(seqs):
            del seqs[: self._head]  # amortised compaction
            self._head = 0

    def first(self) -> Task:
        return self.tasks[self._seqs[self._head]]

    def popleft(self) -> Task:
        task = self.tasks.pop(self._seqs[self._head])
        self._head += 1
        if self.tasks:
            self._skip_holes()
        else:
            self._seqs.clear()
            self._head = 0
            self._holes.clear()
        return task

    def remove(self, task: Task) -> None:
        del self.tasks[task.seq]
        if not self.tasks:
            self._seqs.clear()
            self._head = 0
            self._holes.clear()
        elif task.seq == self._seqs[self._head]:
            self._head += 1
            self._skip_holes()
        else:
            self._holes.add(task.seq)

    def rank(self, seq: int) -> int:
        """How many queued entries arrived before `seq`."""
        before = bisect_left(self._seqs, seq, self._head) - self._head
        return before - int(self._holes.bisect_left(seq))


class _TenantQueue:
    __slots__ = ("cost", "fifo", "finish", "gen", "name", "next_tag", "ordinal")

    def __init__(self, name: str, ordinal: int, cost: int) -> None:
        self.name = name
        self.ordinal = ordinal
        self.cost = cost
        self.next_tag = 0
        self.finish = 0
        # The stamp of the tenant's one valid heap entry; see FairClass._stamp.
        self.gen = 0
        self.fifo = _RankedFifo()


class FairClass:
    """The tasks of one priority in one lane, ordered by weighted fairness over tenants."""

    def __init__(self, tenant_weights: Mapping[str, int] | None = None) -> None:
        weights = dict(tenant_weights or {})
        if any(w < 1 for w in weights.values()):
            raise ValueError("tenant weights must be positive integers")
        self._weights = weights
        self._base = lcm(1, *weights.values())
        self._tenants: dict[str, _TenantQueue] = {}
        # Empty tenants still remembered for their finish tag, oldest first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._heap: list[tuple[int, int, int, str]] = []
        self._vclock = 0
        self._ordinals = 0
        self._stamps = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def _stamp(self) -> int:
        # One counter for the whole class, never per tenant: a tenant that is forgotten and
        # created again must not revive a stale heap entry from its earlier life.
        self._stamps += 1
        return self._stamps

    def _tenant(self, name: str) -> _TenantQueue:
        tq = self._tenants.get(name)
        if tq is None:
            self._ordinals += 1
            tq = _TenantQueue(name, self._ordinals, self._base // self._weights.get(name, 1))
            self._tenants[name] = tq
        return tq

    def _push_entry(self, tq: _TenantQueue) -> None:
        tq.gen = self._stamp()
        heapq.heappush(self._heap, (tq.next_tag, tq.ordinal, tq.gen, tq.name))

    def push(self, task: Task) -> None:
        """Append `task` at the end of its tenant's FIFO."""
        tq = self._tenant(task.tenant)
        if not tq.fifo.tasks:
            self._idle.pop(tq.name, None)
            tq.next_tag = max(tq.finish, self._vclock)
            self._push_entry(tq)
        tq.fifo.append(task)
        self._len += 1

    def _head_tenant(self) -> _TenantQueue | None:
        heap = self._heap
        while heap:
            _tag, _ord, gen, name = heap[0]
            tq = self._tenants.get(name)
            if tq is not None and tq.gen == gen and tq.fifo.tasks:
                return tq
            heapq.heappop(heap)  # stale entry: the tenant emptied or was re-entered
        return None

    def peek(self) -> Task | None:
        """The task that `pop` would return, without removing it."""
        tq = self._head_tenant()
        return None if tq is None else tq.fifo.first()

    def peek_seq(self) -> int:
        """Arrival number of the task `pop` would return (the class must not be empty)."""
        tq = self._head_tenant()
        assert tq is not None
        return tq.fifo.first().seq

    def pop(self) -> Task | None:
        """Remove and return the next task in fair order."""
        tq = self._head_tenant()
        if tq is None:
            return None
        task = tq.fifo.popleft()
        self._len -= 1
        self._vclock = tq.next_tag
        tq.next_tag += tq.cost
        tq.finish = tq.next_tag
        if tq.fifo.tasks:
            tq.gen = self._stamp()
            heapq.heapreplace(self._heap, (tq.next_tag, tq.ordinal, tq.gen, tq.name))
        else:
            heapq.heappop(self._heap)
            self._idle[tq.name] = None
        self._sweep_idle()
        return task

    def remove(self, task: Task) -> None:
        """Remove a queued task from anywhere in the order (cancel, evict, expire)."""
        tq = self._tenants[task.tenant]
        tq.fifo.remove(task)
        self._len -= 1
        if not tq.fifo.tasks:
            tq.gen = self._stamp()  # its heap entry is now stale
            self._idle[tq.name] = None

    def _sweep_idle(self) -> None:
        # An empty tenant whose finish tag the clock has passed carries no fairness memory
        # (it would restart at the clock anyway): forget it so one-off tenants do not leak.
        # Amortised O(1): stops at the first idle tenant still ahead of the clock.
        idle = self._idle
        while idle:
            name = next(iter(idle))
            if self._tenants[name].finish > self._vclock:
                return
            del idle[name]
            del self._tenants[name]

    def position(self, task: Task) -> int:
        """How many tasks of this class dispatch before `task` (0 = next)."""
        me = self._tenants[task.tenant]
        return self._ahead_of(me, me.fifo.rank(task.seq))

    def position_of_last(self, tenant: str) -> int:
        """`position` of the tenant's newest task, in O(T)."""
        me = self._tenants[tenant]
        return self._ahead_of(me, len(me.fifo) - 1)

    def _ahead_of(self, me: _TenantQueue, rank: int) -> int:
        if len(self._tenants) == 1:
            return rank
        tag = me.next_tag + rank * me.cost
        ahead = rank
        for tq in self._tenants.values():
            if tq is me or not tq.fifo.tasks:
                continue
            gap = tag - tq.next_tag
            if gap < 0:
                continue
            # tasks j with tq.next_tag + j*cost < tag, plus an exact tie won by ordinal
            count = -(-gap // tq.cost)
            if gap % tq.cost == 0 and tq.ordinal < me.ordinal:
                count += 1
            ahead += min(count, len(tq.fifo))
        return ahead

    def count_before_seq(self, seq: int) -> int:
        """How many tasks of this class arrived before arrival number `seq`."""
        return sum(tq.fifo.rank(seq) for tq in self._tenants.values())

    def __iter__(self) -> Iterator[Task]:
        for tq in self._tenants.values():
            yield from tq.fifo.tasks.values()

"""Weighted fair queueing across tenants within one priority class.

Start-time fair queueing with integer virtual time: each tenant keeps a FIFO of its tasks
and a `next_tag`; the task with the smallest `(tag, turn)` is dispatched next and its
tenant's tag advances by `cost = base // weight`. A tenant that becomes backlogged starts
at `max(its old finish tag, the class's virtual clock)`, so it neither loses its turn nor
banks credit while idle. With equal weights this is round-robin; with one tenant it is
plain FIFO. Integers keep the order exact (no float ties) and reproducible.

Equal tags are a round. A tenant's head takes its `turn` in the round when it becomes the
head (its previous task left, or the tenant became backlogged); heads go in turn order,
and before any task still behind its tenant's head. So a tenant served twice in a row
never passes one that stayed backlogged (OC-CORE-1026) — ties by tenant ordinal did, for a
tenant a round behind (hypothesis found it).

A backlogged tenant's queued tasks always carry the tags `next_tag, next_tag + cost, …` —
an arithmetic run, whichever of its tasks left. So the class keeps one sorted multiset of
`(tag, turn, ordinal)` keys, one per queued task (behind the head, `turn` is `LATER +
ordinal`; a pop re-keys only the tenant's new head, and not while it is the only tenant):
the head is the next dispatch and a task's position is a bisection, whatever the number of
tenants. A task leaving from the middle takes its tenant's *last* key (the run shortens by
one; the tasks behind it move up).

Every operation is O(log n) in the queued tasks and O(1) in the number of tenants. An
empty tenant is remembered (for its finish tag) only until the virtual clock passes it, and
at most `IDLE_TENANTS_REMEMBERED` of them: beyond that the oldest is forgotten, at the cost
of at most one early turn if it returns within the same round.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from math import lcm
from typing import Generic, TypeVar

from sortedcontainers import SortedList

from orchestrator_core.model import Task

#: Empty tenants kept for their finish tag (a bound on memory, not on time).
IDLE_TENANTS_REMEMBERED = 4096

#: The turn of a task behind its tenant's head: after every head's turn in its round.
LATER = 1 << 62


class RankedFifo:
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
            self._clear()
        return task

    def remove(self, task: Task) -> None:
        del self.tasks[task.seq]
        if not self.tasks:
            self._clear()
        elif task.seq == self._seqs[self._head]:
            self._head += 1
            self._skip_holes()
        else:
            self._holes.add(task.seq)

    def _clear(self) -> None:
        self._seqs.clear()
        self._head = 0
        self._holes.clear()

    def rank(self, seq: int) -> int:
        """How many queued entries arrived before `seq`."""
        before = bisect_left(self._seqs, seq, self._head) - self._head
        return before - int(self._holes.bisect_left(seq))


class Tenant:
    """One tenant of a fairness class: its FIFO of queued tasks and its ordinal (a new one
    each time it is created again, so no stale order key can point at it)."""

    __slots__ = ("fifo", "name", "ordinal", "scale")

    def __init__(self, name: str, ordinal: int, scale: int) -> None:
        self.name = name
        self.ordinal = ordinal
        #: `base // weight`: what one unit of service costs it, in integers.
        self.scale = scale
        self.fifo = RankedFifo()


T = TypeVar("T", bound=Tenant)


class TenantClass(Generic[T]):
    """What both fairness disciplines share: weights made integer scales, the backlogged
    tenants, the idle ones remembered (bounded), and the queued tasks' arrival numbers.
    Subclasses decide the order (`peek`, `pop`)."""

    def __init__(self, tenant_weights: Mapping[str, int] | None) -> None:
        weights = dict(tenant_weights or {})
        if any(w < 1 for w in weights.values()):
            raise ValueError("tenant weights must be positive integers")
        self._weights = weights
        self._base = lcm(1, *weights.values())
        self._tenants: dict[str, T] = {}
        #: Backlogged tenants by ordinal (what an order key points at).
        self._backlogged: dict[int, T] = {}
        #: Empty tenants still remembered, oldest first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        #: Arrival numbers of the queued tasks (to count arrivals across lanes).
        self._seqs: SortedList = SortedList()
        self._ordinals = 0

    def __len__(self) -> int:
        return len(self._seqs)

    def _next_ordinal(self, name: str) -> tuple[int, int]:
        """(a new ordinal, the scale) for a tenant being created."""
        self._ordinals += 1
        return self._ordinals, self._base // self._weights.get(name, 1)

    def _remember_idle(self, t: T) -> None:
        self._idle[t.name] = None
        self._idle.move_to_end(t.name)
        if len(self._idle) > IDLE_TENANTS_REMEMBERED:
            del self._tenants[self._idle.popitem(last=False)[0]]

    def peek(self) -> Task | None:
        raise NotImplementedError

    def _ahead(self, t: T) -> bool:
        """Whether an idle tenant still remembers something the class's clock has not
        passed (else it would restart at the clock anyway)."""
        raise NotImplementedError

    def _sweep_idle(self) -> None:
        # Forget idle tenants that carry no fairness memory, oldest first, so one-off
        # tenants do not leak. Amortised O(1): stops at the first one still ahead.
        idle = self._idle
        while idle:
            name = next(iter(idle))
            if self._ahead(self._tenants[name]):
                return
            del idle[name]
            del self._tenants[name]

    def peek_seq(self) -> int:
        """Arrival number of the task `pop` would return (the class must not be empty)."""
        head = self.peek()
        assert head is not None
        return head.seq

    def count_before_seq(self, seq: int) -> int:
        """How many tasks of this class arrived before arrival number `seq`."""
        return int(self._seqs.bisect_left(seq))

    def tenants_remembered(self) -> int:
        """Tenants this class holds state for (backlogged or idle-remembered)."""
        return len(self._tenants)

    def __iter__(self) -> Iterator[Task]:
        for t in self._backlogged.values():
            yield from t.fifo.tasks.values()


class _TenantQueue(Tenant):
    __slots__ = ("finish", "next_tag", "turn")

    def __init__(self, name: str, ordinal: int, scale: int) -> None:
        super().__init__(name, ordinal, scale)
        #: Tag of the tenant's head task while it is backlogged.
        self.next_tag = 0
        #: Tag its next task would start at after its last dispatch.
        self.finish = 0
        #: The head's turn in its round (when it became the head).
        self.turn = 0

    def key(self, rank: int) -> tuple[int, int, int]:
        """The order key of the tenant's queued task of rank `rank` (0 = its head)."""
        turn = self.turn if rank == 0 else LATER + self.ordinal
        return self.next_tag + rank * self.scale, turn, self.ordinal


class FairClass(TenantClass[_TenantQueue]):
    """The tasks of one priority in one lane, ordered by weighted fairness over tenants."""

    def __init__(self, tenant_weights: Mapping[str, int] | None = None) -> None:
        super().__init__(tenant_weights)
        #: One `(tag, turn, ordinal)` per queued task: the dispatch order.
        self._keys: SortedList = SortedList()
        self._vclock = 0
        self._turns = 0

    def _tenant(self, name: str) -> _TenantQueue:
        tq = self._tenants.get(name)
        if tq is None:
            tq = self._tenants[name] = _TenantQueue(name, *self._next_ordinal(name))
        return tq

    def push(self, task: Task) -> None:
        """Append `task` at the end of its tenant's FIFO."""
        tq = self._tenant(task.tenant)
        if not tq.fifo.tasks:
            self._idle.pop(tq.name, None)
            tq.next_tag = max(tq.finish, self._vclock)
            if len(self._backlogged) == 1:  # the tenant that was alone takes its turn first
                (alone,) = self._backlogged.values()
                if alone.turn >= LATER:
                    self._keys.remove(alone.key(0))
                    self._take_turn(alone)
                    self._keys.add(alone.key(0))
            self._take_turn(tq)
            self._backlogged[tq.ordinal] = tq
        self._keys.add(tq.key(len(tq.fifo)))
        self._seqs.add(task.seq)
        tq.fifo.append(task)

    def peek(self) -> Task | None:
        """The task that `pop` would return, without removing it."""
        if not self._keys:
            return None
        return self._backlogged[self._keys[0][2]].fifo.first()

    def pop(self) -> Task | None:
        """Remove and return the next task in fair order."""
        if not self._keys:
            return None
        tag, _, ordinal = self._keys.pop(0)
        tq = self._backlogged[ordinal]
        task = tq.fifo.popleft()
        self._seqs.remove(task.seq)
        self._vclock = tag
        tq.next_tag += tq.scale
        tq.finish = tq.next_tag
        if not tq.fifo.tasks:
            self._went_idle(tq)
        elif len(self._backlogged) > 1:  # its next task is the head: its turn in the round
            self._keys.remove((tq.next_tag, LATER + ordinal, ordinal))
            self._take_turn(tq)
            self._keys.add(tq.key(0))
        else:  # alone, a turn orders nothing: taken once another tenant is backlogged
            tq.turn = LATER + ordinal
        self._sweep_idle()
        return task

    def remove(self, task: Task) -> None:
        """Remove a queued task from anywhere in the order (cancel, evict, expire)."""
        tq = self._tenants[task.tenant]
        self._keys.remove(tq.key(len(tq.fifo) - 1))
        self._seqs.remove(task.seq)
        tq.fifo.remove(task)
        if not tq.fifo.tasks:
            self._went_idle(tq)

    def _take_turn(self, tq: _TenantQueue) -> None:
        self._turns += 1
        tq.turn = self._turns

    def _went_idle(self, tq: _TenantQueue) -> None:
        del self._backlogged[tq.ordinal]
        self._remember_idle(tq)

    def _ahead(self, t: _TenantQueue) -> bool:
        return t.finish > self._vclock

    def position(self, task: Task) -> int:
        """How many tasks of this class dispatch before `task` (0 = next)."""
        me = self._tenants[task.tenant]
        return int(self._keys.bisect_left(me.key(me.fifo.rank(task.seq))))

    def position_of_last(self, tenant: str) -> int:
        """`position` of the tenant's newest task."""
        me = self._tenants[tenant]
        return int(self._keys.bisect_left(me.key(len(me.fifo) - 1)))

"""Token-weighted fairness across tenants within one priority class: a Virtual Token Counter.

After Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). Each tenant has
a counter of the service it received — `w_in` per prompt token, `w_out` per output token,
divided by its weight — and the backlogged tenant with the smallest counter goes next. A
tenant that becomes backlogged is lifted to the smallest counter of the backlogged tenants
(or, with none, to where the last dispatch left the class), so it banks no credit while idle.

Charges arrive from outside, as service happens: the prompt when the task is dispatched
(the admission estimate; `charge` adds the engine's count where it is higher) and output
tokens as they stream. Counters are integers (weights scale by their lcm): the order is exact
and reproducible.

The bound (`.specs/41-placement-fairness.md`, OC-FAIR-1502): with at most `S` tasks running at
once and no task costing more than `L` charged tokens, two tenants f, g backlogged throughout
an interval receive service within `2·S·L·max(1/φ_f, 1/φ_g)` of their weighted shares.

Costs: push, pop, remove and charge are O(log n) in queued tasks plus O(log B) in backlogged
tenants, O(1) in idle ones (remembered only while ahead of the floor, at most
`IDLE_TENANTS_REMEMBERED`). `position` is an estimate — future order depends on tokens not yet
generated — from each backlogged tenant's mean queued cost: O(B).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sortedcontainers import SortedList

from orchestrator_core.fair import Tenant, TenantClass
from orchestrator_core.model import Task

#: A queued task's estimated charge in tokens (before weights): its prompt plus the output
#: it may produce.
CostEstimate = Callable[[Task], int]


class _Tenant(Tenant):
    __slots__ = ("counter", "queued_cost")

    def __init__(self, name: str, ordinal: int, scale: int) -> None:
        super().__init__(name, ordinal, scale)
        self.counter = 0
        #: Sum of the estimated costs of its queued tasks (for position estimates).
        self.queued_cost = 0


class TokenFairClass(TenantClass[_Tenant]):
    """The tasks of one priority in one lane, ordered by virtual token counters."""

    def __init__(
        self, estimate: CostEstimate, tenant_weights: Mapping[str, int] | None = None
    ) -> None:
        super().__init__(tenant_weights)
        self._estimate = estimate
        #: One `(counter, ordinal)` per backlogged tenant: the dispatch order.
        self._order: SortedList = SortedList()
        #: The smallest backlogged counter at the last dispatch (non-decreasing).
        self._floor = 0

    def _tenant(self, name: str) -> _Tenant:
        t = self._tenants.get(name)
        if t is None:
            t = self._tenants[name] = _Tenant(name, *self._next_ordinal(name))
            t.counter = self._floor  # a forgotten tenant was at most at the floor
        return t

    def _min_counter(self) -> int:
        return int(self._order[0][0]) if self._order else self._floor

    def push(self, task: Task) -> None:
        """Append `task` at the end of its tenant's FIFO."""
        t = self._tenant(task.tenant)
        if not t.fifo.tasks:
            self._idle.pop(t.name, None)
            t.counter = max(t.counter, self._min_counter())  # no credit banked while idle
            self._backlogged[t.ordinal] = t
            self._order.add((t.counter, t.ordinal))
        t.fifo.append(task)
        t.queued_cost += self._estimate(task)
        self._seqs.add(task.seq)

    def peek(self) -> Task | None:
        """The task that `pop` would return, without removing it."""
        if not self._order:
            return None
        return self._backlogged[self._order[0][1]].fifo.first()

    def pop(self) -> Task | None:
        """Remove and return the next task (the smallest counter's); its prompt is charged
        by the caller (`charge`), as service begins."""
        if not self._order:
            return None
        counter, ordinal = self._order[0]
        self._floor = max(self._floor, int(counter))
        t = self._backlogged[ordinal]
        task = t.fifo.popleft()
        self._left(t, task)
        self._sweep_idle()
        return task

    def remove(self, task: Task) -> None:
        """Remove a queued task from anywhere (cancel, evict, expire): nothing is charged."""
        t = self._tenants[task.tenant]
        t.fifo.remove(task)
        self._left(t, task)

    def _left(self, t: _Tenant, task: Task) -> None:
        self._seqs.remove(task.seq)
        t.queued_cost -= self._estimate(task)
        if not t.fifo.tasks:
            self._order.remove((t.counter, t.ordinal))
            del self._backlogged[t.ordinal]
            self._remember_idle(t)

    def charge(self, tenant: str, tokens: int) -> None:
        """Count `tokens` (weighted by the caller's token costs) of service to `tenant`."""
        if tokens <= 0:
            return
        t = self._tenant(tenant)
        if t.ordinal in self._backlogged:
            self._order.remove((t.counter, t.ordinal))
            t.counter += tokens * t.scale
            self._order.add((t.counter, t.ordinal))
        else:
            t.counter += tokens * t.scale
            self._remember_idle(t)

    def counter(self, tenant: str) -> int:
        """The tenant's counter (the floor for a tenant not remembered)."""
        t = self._tenants.get(tenant)
        return t.counter if t is not None else self._floor

    def _ahead(self, t: _Tenant) -> bool:
        return t.counter > self._floor  # at or below it, a lift would restore it anyway

    def position(self, task: Task) -> int:
        """Estimated number of tasks of this class dispatched before `task` (0 = next)."""
        me = self._tenants[task.tenant]
        return self._estimated_ahead(me, me.fifo.rank(task.seq))

    def position_of_last(self, tenant: str) -> int:
        """`position` of the tenant's newest task."""
        me = self._tenants[tenant]
        return self._estimated_ahead(me, len(me.fifo) - 1)

    def _estimated_ahead(self, me: _Tenant, rank: int) -> int:
        # Each backlogged tenant's queued tasks are assumed to cost its mean estimate: its
        # k-th starts at counter + k·mean. Count those starting before ours.
        def mean(t: _Tenant) -> float:
            return max(t.queued_cost, len(t.fifo)) * t.scale / len(t.fifo)

        start = me.counter + rank * mean(me)
        ahead = rank
        for t in self._backlogged.values():
            if t is me or t.counter > start:
                continue
            x = (start - t.counter) / mean(t)
            whole = int(x)
            starting_before = whole + 1 if x > whole else whole + (t.ordinal < me.ordinal)
            ahead += min(len(t.fifo), starting_before)
        return ahead

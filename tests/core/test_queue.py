import pytest

from orchestrator_core.errors import ErrorCode
from orchestrator_core.fair import IDLE_TENANTS_REMEMBERED, FairClass
from orchestrator_core.model import (
    Determinism,
    Placement,
    PlacementMode,
    Priority,
    Task,
    TaskState,
)
from orchestrator_core.queue import (
    ANY_LANE,
    STRICT_LANE,
    Admitted,
    PoolQueue,
    QueuePolicy,
    Rejected,
    pin_lane,
)

I, B = Priority.INTERACTIVE, Priority.BATCH


def t(i, priority=I, tenant="default", **kw):
    return Task(f"t{i}", "pool", priority=priority, tenant=tenant, **kw)


def drain(q, lanes=(ANY_LANE,), now=0.0):
    out = []
    while True:
        task, _ = q.take_next(lanes, now)
        if task is None:
            return out
        out.append(task.id)


def test_offer_answers_position_and_capacity_counts_both_priorities():
    """OC-CORE-1020, OC-CORE-1021"""
    q = PoolQueue(3)
    assert q.offer(t(1, B)) == Admitted(0)
    assert q.offer(t(2, I)) == Admitted(0)  # interactive goes ahead of the batch task
    assert q.offer(t(3, B)) == Admitted(2)
    assert (q.depth(I), q.depth(B), q.depth()) == (1, 2, 3)
    result = q.offer(t(4, I))
    assert isinstance(result, Rejected)


def test_reject_policy_rejects_only_when_full_with_backoff():
    """OC-CORE-1022, OC-CORE-1021"""
    q = PoolQueue(2, QueuePolicy.REJECT)
    assert isinstance(q.offer(t(1)), Admitted)
    assert isinstance(q.offer(t(2)), Admitted)
    assert q.offer(t(3), backoff_ms=1500) == Rejected(ErrorCode.ADMISSION_REJECT, 1500)
    q.cancel("t1")
    assert isinstance(q.offer(t(4)), Admitted)


def test_drop_lru_evicts_oldest_batch_then_oldest_interactive():
    """OC-CORE-1023"""
    q = PoolQueue(3, QueuePolicy.DROP_LRU)
    q.offer(t(1, I))
    q.offer(t(2, B))
    q.offer(t(3, B))
    r = q.offer(t(4, I))
    assert isinstance(r, Admitted) and r.evicted is not None
    assert r.evicted.id == "t2"
    assert r.evicted.state is TaskState.EVICTED
    assert r.evicted.error is ErrorCode.QUEUE_FULL_DROP_LRU
    r = q.offer(t(5, I))
    assert isinstance(r, Admitted) and r.evicted.id == "t3"
    r = q.offer(t(6, I))  # no batch left: the oldest interactive goes
    assert isinstance(r, Admitted) and r.evicted.id == "t1"
    assert q.depth() == 3


def test_drop_lru_batch_offer_never_evicts_interactive():
    """OC-CORE-1023"""
    q = PoolQueue(2, QueuePolicy.DROP_LRU)
    q.offer(t(1, I))
    q.offer(t(2, I))
    r = q.offer(t(3, B))
    assert isinstance(r, Rejected) and r.reason is ErrorCode.ADMISSION_REJECT
    assert {x.id for x in q} == {"t1", "t2"}


def test_interactive_dispatches_before_batch_fifo_within_priority():
    """OC-CORE-1024, OC-CORE-1025"""
    q = PoolQueue(10)
    for i, p in enumerate([B, I, B, I, B]):
        q.offer(t(i, p))
    assert drain(q) == ["t1", "t3", "t0", "t2", "t4"]


def test_tenants_share_dispatch_round_robin():
    """OC-CORE-1026"""
    q = PoolQueue(100)
    for i in range(5):
        q.offer(t(f"a{i}", B, "a"))
    q.offer(t("b0", B, "b"))
    q.offer(t("b1", B, "b"))
    assert drain(q) == ["ta0", "tb0", "ta1", "tb1", "ta2", "ta3", "ta4"]


def test_tenant_weights_give_proportional_share():
    """OC-CORE-1026"""
    q = PoolQueue(100, tenant_weights={"heavy": 2})
    for i in range(6):
        q.offer(t(f"h{i}", B, "heavy"))
        q.offer(t(f"l{i}", B, "light"))
    order = drain(q)[:9]
    assert sum(x.startswith("th") for x in order) == 6
    assert sum(x.startswith("tl") for x in order) == 3


def test_invalid_weights_rejected():
    with pytest.raises(ValueError):
        PoolQueue(1, tenant_weights={"x": 0})


def test_cancel_position_and_depth():
    """OC-CORE-1027"""
    q = PoolQueue(10)
    for i in range(4):
        q.offer(t(i))
    assert [q.position(f"t{i}") for i in range(4)] == [0, 1, 2, 3]
    cancelled = q.cancel("t1")
    assert cancelled is not None and cancelled.state is TaskState.CANCELED
    assert q.cancel("t1") is None
    assert q.position("t1") is None
    assert [q.position(f"t{i}") for i in (0, 2, 3)] == [0, 1, 2]
    assert q.depth(I) == 3
    assert drain(q) == ["t0", "t2", "t3"]


def test_position_matches_dispatch_order_with_tenants_and_lanes():
    """OC-CORE-1027"""
    q = PoolQueue(100, tenant_weights={"b": 3})
    specs = [("a", B), ("b", B), ("a", I), ("c", B), ("b", B), ("a", B), ("b", I), ("b", B)]
    for i, (tenant, prio) in enumerate(specs):
        q.offer(t(i, prio, tenant))
    predicted = sorted(q, key=lambda x: q.position(x.id))
    assert [x.id for x in predicted] == drain(q)


def test_deadline_expires_instead_of_running():
    """OC-CORE-1028"""
    q = PoolQueue(10)
    q.offer(t(1, deadline_ms=100.0))
    q.offer(t(2, deadline_ms=500.0))
    q.offer(t(3))
    assert q.next_deadline_ms() == 100.0
    task, expired = q.take_next([ANY_LANE], now_ms=200.0)
    assert [x.id for x in expired] == ["t1"]
    assert expired[0].state is TaskState.EXPIRED and expired[0].error is ErrorCode.DEADLINE_UNMET
    assert task is not None and task.id == "t2"
    assert q.next_deadline_ms() is None


def test_requeue_front_goes_ahead_of_never_run_tasks_and_ignores_capacity():
    """OC-CORE-1030"""
    q = PoolQueue(2)
    q.offer(t(1))
    q.offer(t(2))
    running, _ = q.take_next([ANY_LANE], 0)
    q.offer(t(3))
    q.requeue_front(running, "r0")
    assert running.state is TaskState.QUEUED and running.retries == 1
    assert running.failed_on == {"r0"}
    assert q.depth() == 3
    assert q.position("t1") == 0
    assert drain(q) == ["t1", "t2", "t3"]


def test_pinned_and_strict_tasks_do_not_block_others():
    """OC-CORE-1031"""
    q = PoolQueue(10)
    q.offer(t(1, placement=Placement(PlacementMode.PIN, "r2")))
    q.offer(t(2, determinism=Determinism.STRICT))
    q.offer(t(3))
    # only r1 (not deterministic) has a free slot
    task, _ = q.take_next([pin_lane("r1"), ANY_LANE], 0)
    assert task.id == "t3"
    task, _ = q.take_next([pin_lane("r1"), ANY_LANE], 0)
    assert task is None
    task, _ = q.take_next([pin_lane("r2"), ANY_LANE, STRICT_LANE], 0)
    assert task.id == "t1"


def test_offer_take_cancel_expire_never_iterate_the_queue(monkeypatch):
    """OC-CORE-1029: no operation walks the queued tasks (their iterators would raise)."""
    q = PoolQueue(1000, QueuePolicy.DROP_LRU)
    for i in range(300):
        q.offer(t(i, B if i % 2 else I, tenant=f"x{i % 3}", deadline_ms=1e9 if i % 5 else 5.0))

    def boom(self):
        raise AssertionError("queue scanned")

    monkeypatch.setattr(FairClass, "__iter__", boom)
    monkeypatch.setattr(PoolQueue, "__iter__", boom)
    q.offer(t("new"))
    q.cancel("t7")
    q.take_next([ANY_LANE], 10.0)
    q.expire_due(20.0)
    for i in range(700):
        q.offer(t(f"fill{i}", B))
    assert isinstance(q.offer(t("evictor", I)), Admitted)


def test_offer_of_non_queued_or_duplicate_task_raises():
    q = PoolQueue(5)
    q.offer(t(1))
    with pytest.raises(ValueError):
        q.offer(t(1))
    with pytest.raises(ValueError):
        q.offer(Task("x", "p", state=TaskState.RUNNING))


def test_a_forgotten_tenant_does_not_revive_a_stale_turn():
    """OC-CORE-1026, OC-CORE-1027: found by the state machine — a tenant forgotten after
    emptying and created again must not jump the fair order with its old ordinal."""
    q = PoolQueue(2)
    q.offer(t(1, tenant="a"))
    q.cancel("t1")
    q.offer(t(2, tenant="b"))
    q.cancel("t2")
    q.offer(t(3, tenant="a"))
    q.take_next([ANY_LANE], 0)
    q.offer(t(4, tenant="c"))
    q.offer(t(5, tenant="b"))
    assert (q.position("t4"), q.position("t5")) == (0, 1)
    assert drain(q) == ["t4", "t5"]


def test_one_off_tenants_cost_bounded_memory():
    """OC-CORE-1029: found by a hostile client — 20,000 submits each under a fresh tenant
    kept every tenant alive (the virtual clock never passed them), and every admission
    walked them all. Idle tenants are now capped and admission never visits them."""
    q = PoolQueue(100)
    for i in range(3 * IDLE_TENANTS_REMEMBERED):
        q.offer(t(f"x{i}", B, tenant=f"tenant-{i}"))
        taken, _ = q.take_next([ANY_LANE], 0)
        assert taken is not None and taken.id == f"tx{i}"
    fair = q._lanes[ANY_LANE].classes[B]
    assert fair.tenants_remembered() <= IDLE_TENANTS_REMEMBERED


def test_position_with_many_backlogged_tenants_matches_dispatch():
    """OC-CORE-1027, OC-CORE-1029: positions by bisection agree with the dispatch order
    when tasks leave from the middle of their tenant's run."""
    q = PoolQueue(1000)
    for i in range(60):
        q.offer(t(i, B, tenant=f"t{i % 7}"))
    for i in range(0, 60, 5):
        q.cancel(f"t{i}")
    predicted = sorted(q, key=lambda x: q.position(x.id))
    assert [q.position(x.id) for x in predicted] == list(range(len(predicted)))
    assert [x.id for x in predicted] == drain(q)


def test_position_matches_dispatch_order_across_lanes_and_retries():
    """OC-CORE-1027, OC-CORE-1030, OC-CORE-1031: found by mutation testing — positions
    summed over the other lanes could be cut short or overwritten and no test saw it; and
    a retry counted every other lane's retries ahead of it, whichever arrived first."""
    q = PoolQueue(100)
    pin = Placement(PlacementMode.PIN, "r1")
    specs = [
        (B, {}), (I, {"placement": pin}), (B, {"determinism": Determinism.STRICT}),
        (I, {}), (B, {"placement": pin}), (I, {"determinism": Determinism.STRICT}),
        (B, {}), (I, {}), (B, {"placement": pin}), (I, {"determinism": Determinism.STRICT}),
    ]  # fmt: skip
    for i, (prio, kw) in enumerate(specs):
        q.offer(t(i, prio, **kw))
    lanes = (ANY_LANE, STRICT_LANE, pin_lane("r1"))
    taken = [q.take_next(lanes, 0)[0] for _ in range(2)]
    for running in taken:  # both fail before their first token: retries, in two lanes
        q.requeue_front(running, "r0")
        assert running.retries == 1
    predicted = sorted(q, key=lambda x: q.position(x.id))
    assert [q.position(x.id) for x in predicted] == list(range(len(specs)))
    assert [x.id for x in predicted] == drain(q, lanes=lanes)


def test_cancel_reports_the_canceled_code():
    """OC-CORE-1027"""
    q = PoolQueue(4)
    q.offer(t(1))
    canceled = q.cancel("t1")
    assert canceled is not None and canceled.error is ErrorCode.CANCELED


# -- found by `make mutate` (docs/TESTING.md): each kills survivors that were not equivalent


def _t(id: str, tenant: str = "default", **kw) -> Task:
    return Task(id, "p", tenant=tenant, **kw)


def test_weights_split_dispatch_in_proportion_and_are_checked():
    """OC-CORE-1026"""
    with pytest.raises(ValueError, match="tenant weights must be positive integers"):
        FairClass({"a": 0})
    fair = FairClass({"heavy": 3, "light": 1})  # a weight of 1 is allowed
    seq = 0
    for _ in range(12):
        for tenant in ("light", "heavy"):
            seq += 1
            task = _t(f"{tenant}{seq}", tenant)
            task.seq = seq
            fair.push(task)
    first8 = [fair.pop().tenant for _ in range(8)]
    assert first8.count("heavy") == 6 and first8.count("light") == 2


def test_a_long_fifo_keeps_order_and_ranks_through_its_compaction():
    """OC-CORE-1025, OC-CORE-1027"""
    q = PoolQueue(1000)
    tasks = [_t(f"t{i}") for i in range(200)]
    for task in tasks:
        q.offer(task)
    q.cancel("t150")  # a hole past the compaction point
    taken = [q.take_next([ANY_LANE], 0.0)[0].id for _ in range(140)]
    assert taken == [f"t{i}" for i in range(140)]  # (compacted after 65+ were taken)
    assert q.position("t140") == 0 and q.position("t151") == 10
    rest = [q.take_next([ANY_LANE], 0.0)[0].id for _ in range(59)]
    assert rest == [f"t{i}" for i in range(140, 200) if i != 150]


def test_idle_tenants_are_forgotten_oldest_first_past_the_bound(monkeypatch):
    """OC-CORE-1029"""
    from orchestrator_core import fair as fair_module

    monkeypatch.setattr(fair_module, "IDLE_TENANTS_REMEMBERED", 2)
    fair = FairClass()
    for i, tenant in enumerate(("a", "b", "c")):
        task = _t(f"x{i}", tenant)
        task.seq = i + 1
        fair.push(task)
    keep = _t("keep", "z")
    keep.seq = 10
    fair.push(keep)  # holds the clock back: idle tenants stay remembered until the bound
    for task in list(fair):
        if task.tenant != "z":
            fair.remove(task)
    # a and b went idle, then c: with room for two, a (the oldest) was forgotten
    assert fair.tenants_remembered() == 3  # b, c and the backlogged z
    assert "a" not in fair._tenants and {"b", "c"} <= set(fair._tenants)


def test_prefer_does_not_pin():
    """OC-CORE-1031, OC-CORE-1042"""
    q = PoolQueue(10)
    q.offer(_t("p", placement=Placement(PlacementMode.PREFER, "r1")))
    task, _ = q.take_next([ANY_LANE], 0.0)  # r1 busy: only the any-lane is free
    assert task is not None and task.id == "p"


def test_positions_count_other_lanes_and_their_retries():
    """OC-CORE-1027"""
    q = PoolQueue(10)
    q.offer(_t("pinned", placement=Placement(PlacementMode.PIN, "r1")))
    admitted = q.offer(_t("any"))
    assert admitted.position == 1  # the pinned task arrived first
    q.offer(_t("r"))
    retried, _ = q.take_next([ANY_LANE], 0.0)
    assert retried.id == "any"
    q.requeue_front(retried, failed_on="r2")
    assert q.offer(_t("late", placement=Placement(PlacementMode.PIN, "r1"))).position == 3


def test_retries_are_counted_kept_in_order_and_release_their_room():
    """OC-CORE-1030"""
    q = PoolQueue(1)
    a, b = _t("a"), _t("b")
    q.offer(a)
    assert q.take_next([ANY_LANE], 0.0)[0] is a
    q.requeue_front(a, failed_on="r1")
    assert q.take_next([ANY_LANE], 0.0)[0] is a
    q.requeue_front(a, failed_on="r2")
    assert a.retries == 2 and a.failed_on == {"r1", "r2"}
    q.offer(b)  # a retry does not take a new task's room
    assert isinstance(q.offer(_t("c")), Rejected)  # the queue holds one new task
    assert q.take_next([ANY_LANE], 0.0)[0] is a  # the retry first
    assert q.take_next([ANY_LANE], 0.0)[0] is b
    assert isinstance(q.offer(_t("d")), Admitted)  # the retry's room is free again
    assert isinstance(q.offer(_t("e")), Rejected)


def test_two_retries_go_back_in_the_order_they_failed():
    """OC-CORE-1030"""
    q = PoolQueue(10)
    for id in ("a", "b"):
        q.offer(_t(id))
    a, _ = q.take_next([ANY_LANE], 0.0)
    b, _ = q.take_next([ANY_LANE], 0.0)
    for task in (a, b):
        q.requeue_front(task, failed_on="r1")
    assert [q.take_next([ANY_LANE], 0.0)[0].id for _ in range(2)] == ["a", "b"]


def test_queue_errors_say_what_is_wrong():
    """OC-CORE-1021"""
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        PoolQueue(-1)
    q = PoolQueue(1)
    task = _t("x")
    q.offer(task)
    with pytest.raises(ValueError, match="task x is not a new queued task"):
        q.offer(task)
    assert q.offer(_t("y"), backoff_ms=0).backoff_ms == 0


@pytest.mark.parametrize(
    ("steps", "order"),
    [
        # a's first task is canceled, so a comes back a round behind c: its two turns must
        # not both pass c, which waited since before the first
        ("+b . +a -a +c . +a +c . +a .", ["b", "c", "a", "c"]),
        # b's second task ties a's at the next tag: a waited since before b's first turn
        ("+a . +b +a +b . .", ["a", "b", "a"]),
    ],
)
def test_a_tenant_is_never_served_twice_while_another_stays_backlogged(steps, order):
    """OC-CORE-1026 (two cases hypothesis found: equal tags used to go by tenant ordinal)"""
    fair, served, seq = FairClass(), [], 0
    queued: dict[str, list[Task]] = {}
    for step in steps.split():
        if step == ".":
            task = fair.pop()
            assert task is not None
            served.append(task.tenant)
            queued[task.tenant].remove(task)
        elif step.startswith("+"):
            seq += 1
            task = _t(f"x{seq}", step[1:])
            task.seq = seq
            fair.push(task)
            queued.setdefault(step[1:], []).append(task)
        else:
            fair.remove(queued[step[1:]].pop())
    assert served == order


def test_a_tenant_whose_waiting_task_is_evicted_for_its_own_newer_one_keeps_its_turn():
    """OC-CORE-1026, OC-CORE-1023 (found by the state machine: drop-lru evicted a's waiting
    task to queue a's newer one, and a lost its turn to c, served once already meanwhile)"""
    q = PoolQueue(2, QueuePolicy.DROP_LRU)

    def take() -> str:
        task, _ = q.take_next([ANY_LANE], 0.0)
        assert task is not None
        return task.id

    q.offer(t("a1", tenant="a"))
    assert take() == "ta1"
    q.offer(t("a2", tenant="a"))
    q.offer(t("c1", tenant="c"))
    assert take() == "tc1"  # a is owed the next turn from here on
    q.offer(t("c2", tenant="c"))
    admitted = q.offer(t("a3", tenant="a"))  # full: a2, the oldest, makes room
    assert isinstance(admitted, Admitted) and admitted.evicted is not None
    assert admitted.evicted.id == "ta2" and admitted.position == 0
    assert [take(), take()] == ["ta3", "tc2"]

"""Prefix-aware placement in the core: block names, the index, the scorer with its load
guard, slot choice and the bounded wait (.specs/41-placement-fairness.md)."""

from hypothesis import given
from hypothesis import strategies as st

from orchestrator_core.dispatch import PrefixRouting, next_dispatch
from orchestrator_core.model import Determinism, Placement, PlacementMode, Task, TaskState
from orchestrator_core.placement import Placed, PlacementRequest, ReplicaSnapshot, place
from orchestrator_core.prefix import CacheHit, PrefixIndex, block_names
from orchestrator_core.queue import PoolQueue
from orchestrator_core.sessions import SessionTable
from tests.core.test_placement import replicas

SYSTEM = b"You are a careful assistant. " * 40  # 1160 bytes: 4 blocks of 256


def names(text: bytes) -> tuple[int, ...]:
    return block_names(text, 256, 1000)


def test_block_names_are_chained_prefix_names_of_whole_blocks():
    """OC-PFX-1501"""
    a, b = names(SYSTEM + b"question one"), names(SYSTEM + b"another question")
    assert len(a) == len(SYSTEM + b"question one") // 256  # a partial block is not named
    assert a[:4] == b[:4]  # the shared system prompt: the same names
    changed = names(b"X" + SYSTEM[1:] + b"question one")
    assert not set(changed) & set(a)  # one byte in the first block renames every block
    assert block_names(SYSTEM, 256, 2) == a[:2]  # bounded per prompt
    assert block_names(b"short", 256, 10) == ()


@given(st.binary(min_size=0, max_size=600), st.binary(min_size=0, max_size=600))
def test_property_equal_names_mean_equal_prefixes(x, y):
    """OC-PFX-1501"""
    nx, ny = block_names(x, 32, 100), block_names(y, 32, 100)
    for i, (p, q) in enumerate(zip(nx, ny, strict=False)):
        assert (p == q) == (x[: (i + 1) * 32] == y[: (i + 1) * 32])


def test_replica_index_is_an_lru_bounded_per_replica_and_forgotten():
    """OC-PFX-1502"""
    index = PrefixIndex(capacity=6)
    first = names(SYSTEM)
    index.record("r0", first)
    assert index.hit("r0", first).blocks == 4
    assert index.hit("r1", first).blocks == 0
    other = names(b"Z" * 1024)
    index.record("r0", other)  # 8 names for 6 places: the least recently used go
    assert index.size("r0") == 6
    assert index.hit("r0", other).blocks == 4
    # what is left of the first prompt is still its head (tails are evicted first)
    assert index.hit("r0", first).blocks == 2
    index.forget("r0")
    assert index.size("r0") == 0 and index.hit("r0", other).blocks == 0


def test_slot_index_keeps_each_slots_last_prompt_within_the_budget():
    """OC-PFX-1502, OC-PFX-1505"""
    index = PrefixIndex(capacity=8)
    a, b = names(SYSTEM + b"a"), names(b"Q" * 1024)
    index.record("r0", a, slot=0)
    index.record("r0", b, slot=1)
    assert index.size("r0") <= 2 * 8  # the replica's LRU, and its slots sharing as much
    assert index.hit("r0", a, [0, 1]) == CacheHit(4, 0, 2)  # its own slot's KV
    assert index.hit("r0", b, [0, 1]).slot == 1
    # slot 0 busy: slot 1 gets it, and the replica's prompt cache still holds it
    assert index.hit("r0", a, [1]) == CacheHit(4, 1, 2)
    # nothing matches: the least recently used free slot, whose content is worth least
    assert index.hit("r0", names(b"W" * 600), [0, 1]).slot == 0
    index.record("r0", b, slot=0)  # slot 0 now holds b
    assert index.hit("r0", b, [0, 1]).slot == 1  # both hold b: the less recently used
    assert index.hit("r0", a, [0, 1]).blocks == 4  # a is still in the replica's cache


def r(id, busy=0, total=4, **kw):
    return ReplicaSnapshot(id, ready=True, slots_total=total, slots_busy=busy, **kw)


cached = st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 8), max_size=6)


@given(replicas, cached, st.integers(0, 3), st.sampled_from(list(Determinism)))
def test_property_prefix_scorer_never_picks_an_ineligible_replica_and_is_deterministic(
    reps, hits, guard, determinism
):
    """OC-PFX-1503"""
    req = PlacementRequest(determinism, cached=hits, load_guard=guard)
    got = place(req, reps)
    assert got == place(req, list(reversed(reps)))
    if isinstance(got, Placed):
        chosen = next(x for x in reps if x.id == got.replica_id)
        assert chosen.serving and chosen.slots_free > 0
        assert determinism is not Determinism.STRICT or chosen.deterministic
        if got.reason == "prefix":  # within the load guard, holding the longest prefix
            # (the guard counts from the least busy replica that could take the task: for a
            # strict one, a deterministic one)
            eligible = [
                x for x in reps if x.serving and x.slots_free > 0
                and (determinism is not Determinism.STRICT or x.deterministic)
            ]  # fmt: skip
            least = min(x.slots_busy for x in eligible)
            assert chosen.slots_busy <= least + guard
            guarded = [x for x in eligible if x.slots_busy <= least + guard]
            if determinism is not Determinism.STRICT:
                assert hits[chosen.id] == max(hits.get(x.id, 0) for x in guarded)


@given(st.integers(0, 3), st.integers(0, 8), st.integers(0, 8), st.integers(0, 2))
def test_property_with_equal_load_the_longer_cached_prefix_wins(busy, x, y, guard):
    """OC-PFX-1503"""
    req = PlacementRequest(cached={"a": x, "b": y}, load_guard=guard)
    got = place(req, [r("a", busy), r("b", busy)])
    assert isinstance(got, Placed)
    if x != y:
        assert got.replica_id == ("a" if x > y else "b") and got.reason == "prefix"
    # prefix placement off: the same load falls back to the id
    assert place(PlacementRequest(cached={"a": x, "b": y}), [r("a", busy), r("b", busy)]) == Placed(
        "a"
    )


@given(st.integers(2, 5), st.integers(0, 2), st.integers(5, 40))
def test_property_the_load_guard_bounds_how_many_tasks_pile_on_one_replica(n, guard, tasks):
    """OC-PFX-1504: every task carries the same hot prefix, held by replica r0 alone; with
    no slot freed, no replica ever gets more than `guard + 1` busy slots ahead of the
    least busy one."""
    busy = dict.fromkeys((f"r{i}" for i in range(n)), 0)
    for _ in range(tasks):
        reps = [r(rid, b, total=100) for rid, b in busy.items()]
        got = place(PlacementRequest(cached={"r0": 8}, load_guard=guard), reps)
        assert isinstance(got, Placed)
        busy[got.replica_id] += 1
        assert max(busy.values()) - min(busy.values()) <= guard + 1


def _dispatch(queue, reps, routing, now=0.0, per_block=None):
    return next_dispatch(queue, reps, SessionTable(), now, routing, per_block)


def test_dispatch_records_what_it_sent_and_the_next_shared_prefix_follows_it():
    """OC-PFX-1502, OC-PFX-1503, OC-PFX-1505"""
    routing = PrefixRouting(PrefixIndex(100), per_slot=True, load_guard=1)
    queue = PoolQueue(10)
    tasks = [Task(f"t{i}", "p", prefix=names(SYSTEM + b"q%d" % i)) for i in range(4)]
    for task in tasks[:2]:
        queue.offer(task)
    step = _dispatch(queue, [r("a", total=2), r("b", total=2)], routing)
    assert (step.replica_id, step.slot, step.reason) == ("a", 0, "least-loaded")
    # slot 0 of `a` is leased; `a` still holds the prefix (its prompt cache) and is within
    # the load guard: the same prefix goes to its other slot
    reps = [r("a", 1, total=2, busy_slot_ids=frozenset({0})), r("b", total=2)]
    step = _dispatch(queue, reps, routing)
    assert (step.replica_id, step.slot, step.reason, step.cached_blocks) == ("a", 1, "prefix", 4)
    # `a` two slots ahead of `b` is past the guard: load wins
    queue.offer(tasks[2])
    reps = [r("a", 2, total=3, busy_slot_ids=frozenset({0, 1})), r("b", total=3)]
    step = _dispatch(queue, reps, routing)
    assert (step.replica_id, step.reason) == ("b", "least-loaded")
    # both hold it now, equally loaded: the slot whose own KV has it, on the lower id
    queue.offer(tasks[3])
    reps = [r("a", 1, total=3, busy_slot_ids=frozenset({1})), r("b", 1, total=3)]
    step = _dispatch(queue, reps, routing)
    assert (step.task, step.replica_id, step.slot, step.reason) == (tasks[3], "a", 0, "prefix")


def _warm_routing(prefix):
    """`warm`'s only slot holds `prefix` and is busy; `cold` is free and holds nothing."""
    index = PrefixIndex(100)
    index.record("warm", prefix, slot=0)
    reps = [r("warm", 1, total=1, busy_slot_ids=frozenset({0})), r("cold", total=1)]
    return PrefixRouting(index, per_slot=True, load_guard=1, max_wait_ms=50), reps


def _queued(task):
    queue = PoolQueue(10)
    queue.offer(task)
    return queue


def test_a_task_waits_for_a_warm_busy_replica_only_when_it_pays_and_never_beyond():
    """OC-PFX-1506"""
    prefix = names(SYSTEM + b"q")
    # no prefill estimate yet: never wait on a guess
    routing, reps = _warm_routing(prefix)
    task = Task("t", "p", prefix=prefix)
    step = _dispatch(_queued(task), reps, routing, 0.0, None)
    assert step.task is task and step.replica_id == "cold" and step.hold_until_ms is None
    # 4 blocks x 5 ms = 20 ms saved: not worth a 50 ms wait
    routing, reps = _warm_routing(prefix)
    task = Task("t", "p", prefix=prefix)
    step = _dispatch(_queued(task), reps, routing, 0.0, 5.0)
    assert step.task is task and step.replica_id == "cold"
    # 4 blocks x 100 ms = 400 ms saved: worth a wait of up to 50 ms
    routing, reps = _warm_routing(prefix)
    task = Task("t", "p", prefix=prefix)
    queue = _queued(task)
    step = _dispatch(queue, reps, routing, 1000.0, 100.0)
    assert step.task is None and step.hold_until_ms == 1050.0
    assert task.state is TaskState.QUEUED and queue.position("t") == 0
    step = _dispatch(queue, reps, routing, 1049.0, 100.0)  # still within the wait
    assert step.hold_until_ms == 1050.0
    step = _dispatch(queue, reps, routing, 1050.0, 100.0)  # waited as long as it may
    assert step.task is task and step.replica_id == "cold"
    # the warm slot frees within the wait: the task goes there
    routing, reps = _warm_routing(prefix)
    task = Task("t", "p", prefix=prefix)
    queue = _queued(task)
    assert _dispatch(queue, reps, routing, 0.0, 100.0).task is None
    freed = [r("warm", total=1), r("cold", total=1)]
    step = _dispatch(queue, freed, routing, 10.0, 100.0)
    assert (step.task, step.replica_id, step.reason) == (task, "warm", "prefix")


def test_no_wait_for_pinned_tasks_or_past_a_deadline():
    """OC-PFX-1506"""
    prefix = names(SYSTEM + b"q")
    routing, reps = _warm_routing(prefix)
    pinned = Task("p1", "p", prefix=prefix, placement=Placement(PlacementMode.PIN, "cold"))
    assert _dispatch(_queued(pinned), reps, routing, 0.0, 100.0).task is pinned
    routing, reps = _warm_routing(prefix)
    due = Task("d1", "p", prefix=prefix, deadline_ms=20.0)
    assert _dispatch(_queued(due), reps, routing, 0.0, 100.0).hold_until_ms == 20.0

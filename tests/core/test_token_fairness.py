"""Token fairness (a virtual token counter per tenant) through the real pool queue
(.specs/41-placement-fairness.md, OC-FAIR-1510..1513)."""

from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orchestrator_core.model import Priority, Task
from orchestrator_core.queue import ANY_LANE, PoolQueue, TokenCosts
from orchestrator_core.vtc import TokenFairClass

COSTS = TokenCosts(input=1, output=2)
WEIGHTS = {"a": 1, "b": 2, "c": 3}
SLOTS = 3
MAX_PROMPT, MAX_OUT, MAX_UNDERESTIMATE = 40, 30, 10
#: The most one task can charge (prompt, engine's extra prompt count, output).
L = COSTS.input * (MAX_PROMPT + MAX_UNDERESTIMATE) + COSTS.output * MAX_OUT


def bound(f: str, g: str) -> Fraction:
    """The service difference two backlogged tenants may see, normalised by weight:
    2·S·L·max(1/φ_f, 1/φ_g) (the spec's bound)."""
    return 2 * SLOTS * L * max(Fraction(1, WEIGHTS[f]), Fraction(1, WEIGHTS[g]))


class TokenFairQueue(RuleBasedStateMachine):
    """OC-FAIR-1511, OC-FAIR-1512: tenants submit tasks of any size; up to SLOTS run;
    engines stream output in any interleaving and may report more prompt tokens than
    estimated. Service is what the
    tenants were charged; between any two tenants backlogged throughout an interval the
    weighted service difference stays within the bound, and nobody starves."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = PoolQueue(10_000, tenant_weights=WEIGHTS, token_costs=COSTS)
        self.running: list[list] = []  # [task, output left, prompt underestimate]
        self.served = dict.fromkeys(WEIGHTS, 0)
        self.baseline: dict[tuple[str, str], tuple[int, int]] = {}
        self.waits = dict.fromkeys(WEIGHTS, 0)  # dispatches since the tenant's head queued
        self.n = 0

    def backlogged(self) -> set[str]:
        return {t.tenant for t in self.queue}

    @rule(
        tenant=st.sampled_from(sorted(WEIGHTS)),
        prompt=st.integers(0, MAX_PROMPT),
        out=st.integers(1, MAX_OUT),
    )
    def submit(self, tenant: str, prompt: int, out: int) -> None:
        self.n += 1
        task = Task(f"t{self.n}", "p", tenant=tenant, prompt_tokens=prompt, max_tokens=out)
        self.queue.offer(task)

    @precondition(lambda self: len(self.running) < SLOTS)
    @rule(under=st.integers(0, MAX_UNDERESTIMATE))
    def dispatch(self, under: int) -> None:
        task, _ = self.queue.take_next([ANY_LANE], 0.0)
        if task is None:
            return
        self.served[task.tenant] += COSTS.input * task.prompt_tokens  # charged by take_next
        for tenant in self.backlogged() | {task.tenant}:
            self.waits[tenant] = 0 if tenant == task.tenant else self.waits[tenant] + 1
        self.running.append([task, task.max_tokens, under])

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def stream(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.running) - 1))
        entry = self.running[i]
        task, left, under = entry
        k = data.draw(st.integers(1, left))
        self.queue.charge(task, output_tokens=k)
        self.served[task.tenant] += COSTS.output * k
        entry[1] -= k
        if entry[1] == 0:  # it ends: the engine counted `under` more prompt tokens
            self.queue.charge(task, prompt_tokens=under)
            self.served[task.tenant] += COSTS.input * under
            del self.running[i]

    @invariant()
    def backlogged_tenants_are_served_within_the_bound(self) -> None:
        """OC-FAIR-1511"""
        backlogged = self.backlogged()
        for f in WEIGHTS:
            for g in WEIGHTS:
                if f >= g:
                    continue
                if f in backlogged and g in backlogged:
                    base = self.baseline.setdefault((f, g), (self.served[f], self.served[g]))
                    df = Fraction(self.served[f] - base[0], WEIGHTS[f])
                    dg = Fraction(self.served[g] - base[1], WEIGHTS[g])
                    assert abs(df - dg) <= bound(f, g), (f, g, df, dg)
                else:
                    self.baseline.pop((f, g), None)

    @invariant()
    def no_backlogged_tenant_starves(self) -> None:
        """OC-FAIR-1512: a backlogged tenant is dispatched within a bounded number of
        dispatches (its lag of at most S·L/φ is made up by the others' charges, each
        dispatch charging at least one output token's worth once it runs)."""
        for tenant in self.backlogged():
            assert self.waits[tenant] <= 2 * SLOTS * L + SLOTS


TestTokenFairQueue = TokenFairQueue.TestCase
TestTokenFairQueue.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)


def test_a_tenant_with_ten_times_longer_prompts_gets_a_tenth_of_the_tasks():
    """OC-FAIR-1510: by tokens, not by requests."""
    queue = PoolQueue(1000, token_costs=TokenCosts(1, 0))
    for i in range(100):
        queue.offer(Task(f"long{i}", "p", tenant="long", prompt_tokens=1000, max_tokens=1))
        queue.offer(Task(f"short{i}", "p", tenant="short", prompt_tokens=100, max_tokens=1))
    taken = [queue.take_next([ANY_LANE], 0.0)[0].tenant for _ in range(55)]
    assert taken.count("short") == 50 and taken.count("long") == 5
    requests = PoolQueue(1000)  # request fairness: one each, in turn
    for i in range(10):
        requests.offer(Task(f"long{i}", "p", tenant="long", prompt_tokens=1000))
        requests.offer(Task(f"short{i}", "p", tenant="short", prompt_tokens=100))
    taken = [requests.take_next([ANY_LANE], 0.0)[0].tenant for _ in range(10)]
    assert taken.count("short") == taken.count("long") == 5


def test_a_newly_active_tenant_is_lifted_to_the_minimum_and_banks_no_credit():
    """OC-FAIR-1510"""
    fair = TokenFairClass(TokenCosts().estimate)
    for i in range(3):
        fair.push(Task(f"a{i}", "p", tenant="a", prompt_tokens=10, seq=i))
    fair.pop()
    fair.charge("a", 500)
    assert fair.counter("a") == 500
    fair.push(Task("b0", "p", tenant="b", seq=10))
    assert fair.counter("b") == 500  # lifted to the smallest backlogged counter, not 0
    assert fair.pop().tenant in ("a", "b")
    idle = TokenFairClass(TokenCosts().estimate)
    idle.push(Task("x", "p", tenant="x", seq=0))
    idle.pop()
    idle.charge("x", 70)  # served after it left the queue
    idle.push(Task("y", "p", tenant="y", seq=1))
    assert idle.counter("y") == 0  # the floor: where the last dispatch left the class
    idle.push(Task("x2", "p", tenant="x", seq=2))
    assert idle.counter("x") == 70  # kept: it was served while idle


def test_idle_tenants_cost_nothing_once_behind_the_floor():
    """OC-FAIR-1513: memory is O(1) in idle tenants."""
    fair = TokenFairClass(TokenCosts().estimate)
    for i in range(2000):
        fair.push(Task(f"t{i}", "p", tenant=f"tenant{i}", seq=i))
        fair.pop()
    assert fair.tenants_remembered() <= 1


def test_positions_are_estimated_from_queued_costs():
    """OC-FAIR-1513"""
    queue = PoolQueue(100, token_costs=TokenCosts(1, 0))
    for i in range(4):
        queue.offer(Task(f"big{i}", "p", tenant="big", prompt_tokens=400, max_tokens=1))
    small = [Task(f"s{i}", "p", tenant="small", prompt_tokens=100, max_tokens=1) for i in range(4)]
    positions = [queue.offer(t).position for t in small]
    assert positions == sorted(positions) and positions[-1] <= 4
    order = [queue.take_next([ANY_LANE], 0.0)[0].id for _ in range(8)]
    assert order.index("s3") < order.index("big2")
    assert queue.depth(Priority.INTERACTIVE) == 0


def test_weighted_tenants_share_tokens_in_proportion_to_their_weights():
    """OC-FAIR-1510, OC-FAIR-1511: weights 1 : 3, equal tasks — shares 1 : 3, to within the
    bound (here one task's cost per tenant)."""
    queue = PoolQueue(1000, tenant_weights={"a": 1, "b": 3}, token_costs=TokenCosts(1, 2))
    for i in range(300):
        queue.offer(Task(f"a{i}", "p", tenant="a", prompt_tokens=50, max_tokens=10))
        queue.offer(Task(f"b{i}", "p", tenant="b", prompt_tokens=50, max_tokens=10))
    taken = []
    for _ in range(200):  # one slot: each task streams its output before the next starts
        task = queue.take_next([ANY_LANE], 0.0)[0]
        queue.charge(task, output_tokens=task.max_tokens)
        taken.append(task.tenant)
    assert abs(taken.count("b") - 3 * taken.count("a")) <= 4

from orchestrator_core.admission import AdmissionRequest, Denied, PoolView, check, resolve_pool
from orchestrator_core.errors import ErrorCode
from orchestrator_core.estimator import ServiceEstimator
from orchestrator_core.model import Determinism, Placement, PlacementMode
from orchestrator_core.placement import ReplicaSnapshot

R1 = ReplicaSnapshot("r1", ready=True, slots_total=2)
POOL = PoolView("tiny", "tiny-llama", ctx_max=256, replicas=(R1,))


def run_check(req, pool=POOL, ahead=0, est=None, now=0.0):
    return check(
        req,
        pool,
        ahead=ahead,
        slots_total=2,
        slots_busy=0,
        estimator=est or ServiceEstimator(),
        now_ms=now,
    )


def test_unknown_model():
    """OC-CORE-1040"""
    got = resolve_pool("nope", None, [POOL])
    assert isinstance(got, Denied) and got.code is ErrorCode.UNKNOWN_MODEL
    assert "tiny-llama" in got.message and got.field == "model"
    assert resolve_pool("tiny-llama", None, [POOL]) is POOL
    got = resolve_pool("tiny-llama", "other", [POOL])
    assert isinstance(got, Denied) and got.code is ErrorCode.UNKNOWN_MODEL
    got = resolve_pool("nope", None, [], known_models=["a", "b"])
    assert isinstance(got, Denied) and got.message.endswith("known models: a, b")


def test_resolve_prefers_a_pool_that_is_not_draining():
    draining = PoolView("a", "m", 10, draining=True)
    live = PoolView("b", "m", 10)
    assert resolve_pool("m", None, [draining, live]) is live


def test_context_overflow_names_the_limit():
    """OC-CORE-1041"""
    got = run_check(AdmissionRequest("tiny-llama", 200, 100))
    assert isinstance(got, Denied) and got.code is ErrorCode.INVALID_PARAMS
    assert "256" in got.message and got.field == "max_tokens"
    assert run_check(AdmissionRequest("tiny-llama", 200, 56)) is None


def test_draining_or_unservable_pool_is_unavailable():
    """OC-CORE-1042"""
    got = run_check(AdmissionRequest("tiny-llama", 1, 1), PoolView("p", "m", None, draining=True))
    # a drain is an operator's act: not retriable, and the message says how it ends
    assert got.code is ErrorCode.POOL_DRAINING and "resume" in got.message
    got = run_check(AdmissionRequest("tiny-llama", 1, 1), PoolView("p", "m", None, replicas=()))
    assert got.code is ErrorCode.POOL_UNAVAILABLE
    strict = AdmissionRequest("tiny-llama", 1, 1, determinism=Determinism.STRICT)
    got = run_check(strict)  # no deterministic replica, ever (config): the request is wrong
    assert got.code is ErrorCode.INVALID_PARAMS and got.field == "determinism"
    assert "deterministic" in got.message
    # found by schemathesis: that was a retriable 503, which a client would retry forever;
    # one that is only draining (a reload) is the transient 503
    leaving = ReplicaSnapshot("r", ready=True, deterministic=True, draining=True)
    got = run_check(strict, PoolView("p", "m", None, replicas=(leaving,)))
    assert got.code is ErrorCode.POOL_UNAVAILABLE and "deterministic" in got.message
    # a replica that is not Ready yet (starting) can still serve later
    starting = PoolView("p", "m", None, replicas=(ReplicaSnapshot("r", ready=False),))
    assert run_check(AdmissionRequest("m", 1, 1), starting) is None


def test_pin_to_unknown_replica_is_invalid():
    req = AdmissionRequest("m", 1, 1, placement=Placement(PlacementMode.PIN, "ghost"))
    got = run_check(req)
    assert got.code is ErrorCode.INVALID_PARAMS and got.field == "placement.replica_id"


def test_deadline_unreachable_is_denied():
    """OC-CORE-1043"""
    est = ServiceEstimator()
    # unknown service time: only a past deadline is denied
    assert run_check(AdmissionRequest("m", 1, 10, deadline_ms=5.0), est=est) is None
    assert run_check(AdmissionRequest("m", 1, 10, deadline_ms=5.0), now=6.0).code is (
        ErrorCode.DEADLINE_UNMET
    )
    est.observe(service_ms=100.0, tokens_out=10)  # 10 ms per token
    got = run_check(AdmissionRequest("m", 1, 10, deadline_ms=50.0), est=est)
    assert got.code is ErrorCode.DEADLINE_UNMET
    assert run_check(AdmissionRequest("m", 1, 10, deadline_ms=150.0), est=est) is None
    # with 4 tasks ahead on 2 slots the start is two task-times away
    got = run_check(AdmissionRequest("m", 1, 10, deadline_ms=250.0), ahead=4, est=est)
    assert got.code is ErrorCode.DEADLINE_UNMET


def test_predicted_start_uses_ewma_and_slots():
    """OC-CORE-1044"""
    est = ServiceEstimator(alpha=0.5)
    est.observe(100.0, 10)
    est.observe(200.0, 10)
    assert est.task_ms == 150.0 and est.token_ms == 15.0
    assert est.predicted_start_ms(ahead=0, slots_total=2, slots_busy=1) == 0
    assert est.predicted_start_ms(ahead=1, slots_total=2, slots_busy=1) == 150
    assert est.predicted_start_ms(ahead=2, slots_total=2, slots_busy=2) == 300
    assert est.backoff_ms(slots_total=2) == 1000
    est.observe(10_000.0, 10)
    assert est.backoff_ms(slots_total=2) > 1000


# -- found by `make mutate` (docs/TESTING.md): each kills survivors that were not equivalent


def test_resolve_narrows_to_the_named_pool_and_says_which():
    """OC-CORE-1040"""
    a, b = PoolView("a", "m", 10), PoolView("b", "m", 10)
    assert resolve_pool("m", "b", [a, b]) is b
    assert resolve_pool("m", "c", [a, b]).message == (
        "model 'm' is not served in pool 'c'; known models: m"
    )
    assert resolve_pool("x", None, [a]).message == "model 'x' is not served; known models: m"
    # every pool of the model draining: the first, whose check then says it drains
    drained = [PoolView("a", "m", 10, draining=True), PoolView("b", "m", 10, draining=True)]
    assert resolve_pool("m", None, drained) is drained[0]


def test_refusals_name_what_is_missing():
    """OC-CORE-1042, OC-CORE-1043"""
    pin = Placement(PlacementMode.PIN, "ghost")
    got = run_check(AdmissionRequest("m", 1, 1, placement=pin))
    assert got.message == "replica 'ghost' is not in pool 'tiny'"
    leaving = PoolView("p", "m", None, replicas=(ReplicaSnapshot("r1", True, draining=True),
                                                  ReplicaSnapshot("r2", True)))  # fmt: skip
    got = run_check(AdmissionRequest("m", 1, 1, placement=Placement(PlacementMode.PIN, "r1")),
                    leaving)  # fmt: skip
    assert got.code is ErrorCode.POOL_UNAVAILABLE
    assert got.message == "pool 'p' has no replica that can serve"


def test_deadline_bounds_are_inclusive_of_the_budget():
    """OC-CORE-1043"""
    past = run_check(AdmissionRequest("m", 1, 10, deadline_ms=5.0), now=5.0)
    assert past == Denied(ErrorCode.DEADLINE_UNMET, "deadline_ms is already in the past")
    assert run_check(AdmissionRequest("m", 1, 10, deadline_ms=6.0), now=5.0) is None
    est = ServiceEstimator()
    est.observe(service_ms=100.0, tokens_out=10)  # 10 ms a token: 10 tokens take 100 ms
    assert run_check(AdmissionRequest("m", 1, 10, deadline_ms=100.0), est=est) is None
    got = run_check(AdmissionRequest("m", 1, 10, deadline_ms=50.0), est=est)
    assert (
        got.message == "expected completion in 100 ms (start in 0 ms) exceeds the deadline in 50 ms"
    )


def test_estimates_at_their_edges():
    """OC-CORE-1044"""
    est = ServiceEstimator()
    est.observe(100.0, 0)  # a task that made no token says nothing of the token time
    assert est.task_ms == 100.0 and est.token_ms == 0.0
    one = ServiceEstimator()
    one.observe(100.0, 1)
    assert one.token_ms == 100.0
    # waves of whole tasks: 3 ahead on 2 busy slots start after two task times
    assert one.predicted_start_ms(ahead=3, slots_total=2, slots_busy=2) == 200
    assert one.predicted_start_ms(ahead=1, slots_total=1, slots_busy=1) == 200
    big = ServiceEstimator()
    big.observe(10_000.0, 10)
    assert big.backoff_ms(slots_total=4) == 2500 and big.backoff_ms(slots_total=1) == 10_000


def test_strict_tasks_need_a_deterministic_replica_that_can_serve():
    """OC-CORE-1042"""
    strict = AdmissionRequest("m", 1, 1, determinism=Determinism.STRICT)
    det = ReplicaSnapshot("r1", True, deterministic=True)
    assert run_check(strict, PoolView("p", "m", None, replicas=(det,))) is None
    leaving = ReplicaSnapshot("r1", True, deterministic=True, draining=True)
    plain = ReplicaSnapshot("r2", True)
    got = run_check(strict, PoolView("p", "m", None, replicas=(leaving, plain)))
    assert got.message == "pool 'p' has no deterministic replica that can serve"
    got = run_check(strict, PoolView("p", "m", None, replicas=(plain,)))
    assert got.message == (
        "pool 'p' has no deterministic replicas: a strict task needs a pool configured "
        "`determinism: strict`"
    )

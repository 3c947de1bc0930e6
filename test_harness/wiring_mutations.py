"""Plant the wiring bugs of docs/TESTING.md one at a time, run the test meant to catch each,
and restore the file: prints caught or MISSED per bug; exits 1 if any was missed.

    python -m test_harness.wiring_mutations     (make wiring-mutations)

It edits the working tree while it runs (each file is restored, even on Ctrl-C): do not run
it beside other work on the same checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutation(NamedTuple):
    what: str
    path: str
    old: str
    new: str
    test: str


WIRING = "tests/daemon/test_wiring.py"
ACCESS = "tests/daemon/test_access.py"
FAIRNESS = "tests/daemon/test_placement_fairness.py"
AGENTS = "tests/agents/test_agents.py"
JOIN = "tests/agents/test_join_security.py"
REMOTE = "tests/agents/test_remote_pool.py"
HA = "tests/ha/test_leadership.py"

MUTATIONS = (
    Mutation(
        "queue.tenant_weights dropped where the pool's queue is built",
        "orchestratord/service/dispatcher.py",
        "config.queue.policy, config.queue.tenant_weights",
        "config.queue.policy, {}",
        f"{WIRING}::test_tenant_weights_and_header_reach_the_dispatch_order",
    ),
    Mutation(
        "X-Tenant-Id ignored by the HTTP layer",
        "orchestratord/api/access.py",
        'return open_principal(on_behalf or "default")',
        'return open_principal("default")',
        f"{WIRING}::test_tenant_weights_and_header_reach_the_dispatch_order",
    ),
    Mutation(
        "X-Tenant-Id honoured from any key (a forged tenant)",
        "orchestratord/api/access.py",
        "        if not principal.sees_all:\n",
        "        if False:\n",
        f"{ACCESS}::test_tenants_cannot_see_each_others_work_but_operators_can",
    ),
    Mutation(
        "reload retires the old replicas at once",
        "pool_managerd/pool.py",
        "        if replica.busy == 0:\n            idle.set()",
        "        idle.set()",
        f"{WIRING}::test_reload_lets_running_tasks_finish_on_the_old_replica",
    ),
    Mutation(
        "a reload that changes nothing",
        "pool_managerd/pool.py",
        "            for replica in old:\n                self._retire(replica)",
        "            pass",
        f"{WIRING}::test_reload_lets_running_tasks_finish_on_the_old_replica",
    ),
    Mutation(
        "Last-Event-ID gap check off by one",
        "orchestratord/service/streams.py",
        "after + 1 < self._first",
        "after + 1 < self._first - 1",
        f"{WIRING}::test_resume_exactly_at_inside_and_one_past_the_buffer_edge",
    ),
    Mutation(
        "session affinity ignored by placement",
        "orchestrator_core/placement.py",
        "warm = req.warm_replica == r.id",
        "warm = False",
        f"{WIRING}::test_session_affinity_beats_the_less_busy_replica",
    ),
    Mutation(
        "queued tasks stop being leased during the SIGTERM grace period",
        "orchestratord/service/orchestrator.py",
        "        self.batches.pause()\n",
        "        self.batches.pause()\n        for p in self.pools.values():\n"
        "            p.manager.drain()\n",
        f"{WIRING}::test_sigterm_runs_queued_tasks_in_its_grace_and_ends_the_rest_typed",
    ),
    Mutation(
        "queued tasks left without an ending when the grace period is over",
        "orchestratord/service/dispatcher.py",
        "        for task in list(self.queue):\n",
        "        for task in []:\n",
        f"{WIRING}::test_sigterm_runs_queued_tasks_in_its_grace_and_ends_the_rest_typed",
    ),
    Mutation(
        "TGI stats that always read 0",
        "worker_adapters/tgi_http.py",
        "return EngineStats(None if busy is None else int(busy), None)",
        "return EngineStats(0, None)",
        "tests/conformance/test_conformance.py::test_stats_report_the_engines_own_view[tgi]",
    ),
    Mutation(
        "a reloaded replica restarts on no model",
        "pool_managerd/pool.py",
        "                self._add(replica, model, launched)",
        "                self._add(replica, None, launched)",
        f"{WIRING}::test_a_reloaded_replica_that_fails_restarts_on_the_new_model",
    ),
    Mutation(
        "queue.fairness: tokens dropped where the pool's queue is built",
        "orchestratord/service/dispatcher.py",
        "            token_costs(config),\n",
        "            None,\n",
        f"{FAIRNESS}::test_tokens_fairness_serves_a_light_tenant_ten_tasks_per_heavy_one",
    ),
    Mutation(
        "streamed output never charged to its tenant",
        "orchestratord/service/placement.py",
        "                self._queue.charge(rec.task, output_tokens=new)",
        "                pass",
        f"{FAIRNESS}::test_tokens_fairness_charges_output_as_it_streams",
    ),
    Mutation(
        "a replica that goes down keeps its prefixes",
        "orchestratord/service/dispatcher.py",
        "            self.placement.forget(replica.id)\n",
        "",
        f"{FAIRNESS}::test_a_replica_that_goes_down_forgets_its_prefixes",
    ),
    Mutation(
        "a lost agent's replicas keep taking leases",
        "pool_managerd/hub.py",
        '.lost(session.agent_id, f"agent {session.agent_id} lost: {why}")',
        ".allows(session.agent_id)",
        f"{AGENTS}::test_an_agent_that_stops_beating_goes_unready_and_comes_back",
    ),
    Mutation(
        "heartbeats never checked (a silent agent stays Ready)",
        "pool_managerd/hub.py",
        "                async with asyncio.timeout(window):",
        "                async with asyncio.timeout(None):",
        f"{AGENTS}::test_an_agent_that_stops_beating_goes_unready_and_comes_back",
    ),
    Mutation(
        "any join token accepted",
        "pool_managerd/hub.py",
        'if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token):',
        "if False:",
        f"{JOIN}::test_a_refused_join_says_why_is_logged_and_registers_nothing",
    ),
    Mutation(
        "a rejoining agent's stale replicas kept (duplicates after its restart)",
        "pool_managerd/remote_pool.py",
        "            if replica.id not in current:",
        "            if False:",
        f"{REMOTE}::test_what_agents_report_becomes_replicas_and_a_rejoin_replaces_not_duplicates",
    ),
    Mutation(
        "a drain never sent to the agents",
        "pool_managerd/remote_pool.py",
        "        self._broadcast(pb.Command(drain=pb.Drain()))",
        "        pass",
        f"{AGENTS}::test_drain_resume_reload_and_stop_travel_to_the_agent_with_their_results",
    ),
    Mutation(
        "the dispatch gate ignored: a leader in doubt dispatches",
        "orchestratord/service/dispatcher.py",
        "        if self._may_dispatch is not None and not self._may_dispatch():\n",
        "        if False:\n",
        "tests/ha/test_dispatch_gate.py",
    ),
    Mutation(
        "group commits not fenced by the leadership epoch",
        "orchestratord/store/postgres.py",
        '            conn.execute("BEGIN")\n            if self.epoch is not None:',
        '            conn.execute("BEGIN")\n            if False:',
        "tests/ha/test_fence.py",
    ),
    Mutation(
        "a standby that does not name the leader",
        "orchestratord/daemon.py",
        "standby_app(lambda: self.leadership.leader_url if self.leadership else None,",
        "standby_app(lambda: None,",
        f"{HA}::test_a_standby_is_not_ready_and_names_the_leader",
    ),
    Mutation(
        "a clean stop that keeps the lease (a standby waits it out)",
        "orchestratord/daemon.py",
        "                await leadership.resign(epoch)\n            leadership.close()",
        "                pass\n            leadership.close()",
        f"{HA}::test_a_leader_stopped_cleanly_hands_over_at_once",
    ),
    Mutation(
        "tokens reach a client before a restart would know they did",
        "orchestratord/service/streams.py",
        "opened, gate = await gate(), None",
        "opened, gate = True, None",
        "tests/daemon/test_store.py::"
        "test_a_task_is_journaled_as_streamed_when_its_tokens_first_reach_a_client",
    ),
    Mutation(
        "SQLite's automatic checkpoint left on: a commit on the loop fsyncs",
        "orchestratord/store/sqlite.py",
        '            conn.execute("PRAGMA wal_autocheckpoint=0")',
        "            pass  # the automatic checkpoint stays on",
        "tests/daemon/test_store.py::test_the_log_is_checkpointed_off_the_loop",
    ),
    Mutation(
        "the group commit in the iteration of its first write: before the engine request",
        "orchestratord/store/sql.py",
        "self._loop.call_soon(self._loop.call_soon, self._hand_over)",
        "self._loop.call_soon(self._hand_over)",
        "tests/daemon/test_journal.py::test_the_admission_commit_does_not_delay_the_engine_request",
    ),
    Mutation(
        "a request whose pooled connection the engine had closed fails instead of resending",
        "worker_adapters/http_client.py",
        "                if pooled is None or conn.received:",
        "                if True:",
        "tests/conformance/test_http_client.py::"
        "test_a_pooled_connection_the_engine_closed_is_resent_once_on_a_new_one",
    ),
    Mutation(
        "an agent's call judged before its Hello is read (refusals reach it as INTERNAL)",
        "pool_managerd/hub.py",
        "            first = await self._hello(context)\n            self._authenticate(context)",
        "            self._authenticate(context)\n            first = await self._hello(context)",
        "tests/agents/test_join_security.py::"
        "test_a_wrong_token_is_reported_even_when_refused_while_hello_is_written",
    ),
    Mutation(
        "the first token's commit left to the next iteration, behind the engine's stream",
        "orchestratord/service/tasks.py",
        "                self._store.hurry()",
        "                pass  # the group commits when its turn comes",
        "tests/daemon/test_journal.py::test_a_readers_first_token_is_committed_at_once",
    ),
    Mutation(
        "a write's outcome a plain future: one waiter that leaves cancels it for the others",
        "orchestratord/store/sql.py",
        "done = Durable(loop=self._loop)",
        "done = self._loop.create_future()",
        "tests/daemon/test_journal.py::"
        "test_a_writes_waiters_resume_the_turn_after_its_commit_and_each_may_leave",
    ),
    Mutation(
        "a task's end journaled without the output no chunk holds",
        "orchestratord/service/journal.py",
        '"output": tail,',
        '"output": None,',
        "tests/daemon/test_journal.py::"
        "test_an_unwatched_task_is_journaled_twice_and_its_output_survives",
    ),
    Mutation(
        "a relay's sink declining a read's events ignored (a canceled task's engine runs on)",
        "worker_adapters/http_engine.py",
        "return not self._sink(events) or over",
        "return self._sink(events) is None or over",
        "tests/conformance/test_conformance.py::"
        "test_cancel_mid_stream_releases_the_engine[relay-llamacpp]",
    ),
    Mutation(
        "an engine's reads handed to the relay by a task step, not the connection's callback",
        "worker_adapters/http_connection.py",
        "        if self._consumer is not None:  # handed over once the read is parsed",
        "        if self._consumer is not None and False:",
        "tests/conformance/test_http_client.py::"
        "test_a_relay_hands_each_read_over_from_the_connections_callback",
    ),
    Mutation(
        "a follower's frames written without their chunk's framing",
        "orchestratord/api/streaming.py",
        'b"%x\\r\\n%b\\r\\n" % (len(data), data) if self._chunked else data',
        "data",
        "tests/daemon/test_token_by_token.py::"
        "test_each_token_reaches_the_client_before_the_engine_sends_the_next[native]",
    ),
    Mutation(
        "retention 1,000 times shorter",
        "orchestratord/service/tasks.py",
        "self._retention_ms = retention_s * 1000.0",
        "self._retention_ms = retention_s",
        f"{WIRING}::test_a_finished_task_is_kept_for_its_retention",
    ),
)


def caught(mutation: Mutation) -> bool:
    path = ROOT / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.path}: the code to mutate moved: {mutation.old!r}")
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", mutation.test],
            cwd=ROOT, capture_output=True, timeout=600,
        )  # fmt: skip
        return run.returncode != 0
    finally:
        path.write_text(original)


def main() -> int:
    missed = 0
    for mutation in MUTATIONS:
        ok = caught(mutation)
        missed += not ok
        print(f"{'caught' if ok else 'MISSED'}: {mutation.what}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

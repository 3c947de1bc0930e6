"""Who may do what (issue 13): keys that name principals, the role-by-route matrix, isolation
between tenants, browser-proof defaults, quotas, key handling, audit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestratord import keyring
from orchestratord.api.operations import OPERATIONS
from orchestratord.api_models import KeyCreate, KeyLimits, KeyRole
from orchestratord.keyring import KeyRing, make_entry, write_entries
from orchestratord.service import Refusal
from orchestratord.service.quotas import QuotaAccount
from tests.helpers import BIN, mock_pool, orchctl

ROLES = ("read", "submit", "operator", "admin")

#: Who may call each route, written out here (not derived from the code under test): the
#: roles that grant it, before implication. Every route the daemon serves must be listed.
RULES: dict[tuple[str, str], set[str]] = {
    ("post", "/v1/tasks"): {"submit"},
    ("get", "/v1/tasks"): {"read"},
    ("get", "/v1/tasks/{task_id}"): {"read"},
    ("get", "/v1/tasks/{task_id}/stream"): {"read"},
    ("post", "/v1/tasks/{task_id}/cancel"): {"submit", "operator"},
    ("get", "/v1/sessions/{session_id}"): {"read"},
    ("delete", "/v1/sessions/{session_id}"): {"submit"},
    ("post", "/v1/chat/completions"): {"submit"},
    ("post", "/v1/completions"): {"submit"},
    ("get", "/v1/models"): {"read"},
    ("get", "/v1/models/{model}"): {"read"},
    ("post", "/v1/files"): {"submit"},
    ("get", "/v1/files"): {"read"},
    ("get", "/v1/files/{file_id}"): {"read"},
    ("get", "/v1/files/{file_id}/content"): {"read"},
    ("delete", "/v1/files/{file_id}"): {"submit"},
    ("post", "/v1/batches"): {"submit"},
    ("get", "/v1/batches"): {"read"},
    ("get", "/v1/batches/{batch_id}"): {"read"},
    ("post", "/v1/batches/{batch_id}/cancel"): {"submit", "operator"},
    ("get", "/v1/pools"): {"read"},
    ("get", "/v1/pools/{pool_id}"): {"read"},
    ("get", "/v1/pools/{pool_id}/health"): {"read"},
    ("post", "/v1/pools/{pool_id}/drain"): {"operator"},
    ("post", "/v1/pools/{pool_id}/resume"): {"operator"},
    ("post", "/v1/pools/{pool_id}/reload"): {"operator"},
    ("get", "/v1/agents"): {"read"},
    ("post", "/v1/agents/{agent_id}/stop"): {"operator"},
    ("post", "/v1/keys"): {"admin"},
    ("get", "/v1/keys"): {"admin"},
    ("delete", "/v1/keys/{key_id}"): {"admin"},
    ("get", "/v1/capabilities"): {"read"},
    ("get", "/healthz"): set(),
    ("get", "/readyz"): set(),
    ("get", "/metrics"): set(),
    ("get", "/openapi.json"): set(),
}
#: What each role holds (README's table): submit and operator read; admin is everything.
HOLDS = {
    "read": {"read"},
    "submit": {"submit", "read"},
    "operator": {"operator", "read"},
    "admin": set(ROLES),
}


def make_keys(path: Path, **tenants: tuple[str, ...]) -> dict[str, str]:
    """A key file with one key per name: name -> key; `tenants[name]` = (tenant, *roles)."""
    entries, keys = [], {}
    for name, (tenant, *roles) in tenants.items():
        entry, key = make_entry(KeyCreate(tenant=tenant, roles=[KeyRole(r) for r in roles]))
        entries.append(entry)
        keys[name] = key
    write_entries(path, entries)
    return keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_has_a_rule_and_the_table_names_them_all():
    """OC-AUTH-1301"""
    served = {(op.method, op.path) for op in OPERATIONS}
    assert served == set(RULES), "a route without a rule in RULES (or a rule for no route)"
    for op in OPERATIONS:
        assert {r.value for r in op.access} == RULES[(op.method, op.path)], op.path


async def test_role_by_route_matrix(start_daemon, tmp_path):
    """OC-AUTH-1301, OC-AUTH-1302"""
    keys = make_keys(tmp_path / "keys.yaml", **{r: ("t-" + r, r) for r in ROLES})
    api = await start_daemon(mock_pool(), keys_file=str(tmp_path / "keys.yaml"))
    for op in OPERATIONS:
        path = re.sub(r"\{\w+\}", "nope", op.path)  # unknown ids: no side effects
        json_body = {} if op.request is not None else None
        for role in (None, *ROLES):
            headers = bearer(keys[role]) if role else {}
            async with api.http.request(
                op.method, api.base + path, json=json_body, headers=headers
            ) as r:
                allowed = RULES[(op.method, op.path)]
                where = f"{op.method} {op.path} as {role}"
                if not allowed:
                    assert r.status not in (401, 403), where
                elif role is None:
                    assert r.status == 401, where
                elif allowed & HOLDS[role]:
                    assert r.status not in (401, 403), where
                else:
                    assert r.status == 403, where
                    assert "lacks the role" in (await r.text())


async def test_a_request_without_a_key_learns_only_that_it_needs_one(start_daemon, tmp_path):
    """OC-AUTH-1301: found by schemathesis — a keyless request with a malformed X-Tenant-Id
    got 400 naming the header (it should learn nothing but 401), and a key holder's
    unknown method 400 instead of 405."""
    keys = make_keys(tmp_path / "keys.yaml", a=("acme", "submit"))
    api = await start_daemon(mock_pool(), keys_file=str(tmp_path / "keys.yaml"))
    bad_tenant = {"X-Tenant-Id": ""}
    body = {"model": "mock-model", "prompt": "x"}
    for method, path, headers, status in [
        ("post", "/v1/tasks", bad_tenant, 401),
        ("get", "/v1/nowhere", {}, 401),
        ("trace", "/v1/tasks", {**bad_tenant, **bearer(keys["a"])}, 405),
        ("get", "/v1/nowhere", bad_tenant | bearer(keys["a"]), 404),
        ("post", "/v1/tasks", bad_tenant | bearer(keys["a"]), 400),  # now it is the header
    ]:
        async with api.http.request(method, api.base + path, json=body, headers=headers) as r:
            assert r.status == status, (method, path, await r.text())


async def test_tenants_cannot_see_each_others_work_but_operators_can(start_daemon, tmp_path):
    """OC-AUTH-1303, OC-AUTH-1302, OC-CTRL-2032"""
    keys = make_keys(
        tmp_path / "keys.yaml", a=("acme", "submit"), b=("bolt", "submit"), op=("ops", "operator")
    )
    api = await start_daemon(mock_pool(), keys_file=str(tmp_path / "keys.yaml"))
    a, b, op = bearer(keys["a"]), bearer(keys["b"]), bearer(keys["op"])
    body = {"model": "mock-model", "prompt": "[[stall:0]] mine", "session_id": "s1"}
    async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=a) as r:
        assert r.status == 202
        task_id = (await r.json())["task_id"]
    await api.wait_state(task_id, "running", headers=a)

    async def answer(method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        async with api.http.request(method, api.base + path, headers=headers) as r:
            return r.status, (await r.json()).get("message", "")

    # B learns nothing: the same answer as for an id that never existed
    never = "00000000-0000-4000-8000-00000000dead"
    for method, path in (
        ("GET", "/v1/tasks/{}"),
        ("GET", "/v1/tasks/{}/stream"),
        ("POST", "/v1/tasks/{}/cancel"),
    ):
        status, message = await answer(method, path.format(task_id), b)
        ghost_status, ghost = await answer(method, path.format(never), b)
        assert status == ghost_status == 404
        assert message.replace(task_id, never) == ghost
    assert (await answer("GET", "/v1/sessions/s1", b))[0] == 404

    async def listed(headers: dict[str, str]) -> list[str]:  # what a key's listing shows
        async with api.http.get(f"{api.base}/v1/tasks", headers=headers) as r:
            return [t["task_id"] for t in (await r.json())["tasks"]]

    assert await listed(a) == await listed(op) == [task_id] and await listed(b) == []
    assert (await answer("GET", "/v1/sessions/s1", a))[0] == 200
    # B's own `s1` is another session
    async with api.http.delete(f"{api.base}/v1/sessions/s1", headers=b) as r:
        assert r.status == 204
    assert (await answer("GET", "/v1/sessions/s1", a))[0] == 200
    # a submit key cannot claim another tenant
    async with api.http.get(
        f"{api.base}/v1/tasks/{task_id}", headers={**b, "X-Tenant-Id": "acme"}
    ) as r:
        assert r.status == 403 and (await r.json())["field"] == "X-Tenant-Id"
    # the operator sees it, acts on behalf of acme (its session), and may cancel it
    assert (await answer("GET", f"/v1/tasks/{task_id}", op))[0] == 200
    async with api.http.get(
        f"{api.base}/v1/sessions/s1", headers={**op, "X-Tenant-Id": "acme"}
    ) as r:
        assert r.status == 200
    async with api.http.post(f"{api.base}/v1/tasks/{task_id}/cancel", headers=op) as r:
        assert r.status == 204
    # a forgotten task is EXPIRED to its tenant and unknown to the others
    await api.wait_state(task_id, "canceled", headers=a)
    api.daemon.service.forget(task_id)
    assert (await answer("GET", f"/v1/tasks/{task_id}", a))[0] == 410
    assert (await answer("GET", f"/v1/tasks/{task_id}", b))[0] == 404


async def test_files_and_batches_belong_to_their_tenant(start_daemon, tmp_path):
    """OC-AUTH-1303"""
    keys = make_keys(
        tmp_path / "keys.yaml", a=("acme", "submit"), b=("bolt", "submit"), op=("ops", "operator")
    )
    api = await start_daemon(mock_pool(), keys_file=str(tmp_path / "keys.yaml"))
    a, b, op = bearer(keys["a"]), bearer(keys["b"]), bearer(keys["op"])
    line = (
        '{"custom_id": "1", "method": "POST", "url": "/v1/completions", '
        '"body": {"model": "mock-model", "prompt": "hi", "max_tokens": 2}}\n'
    )
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(line.encode()), filename="in.jsonl")
    async with api.http.post(f"{api.base}/v1/files", data=form, headers=a) as r:
        assert r.status == 200, await r.text()
        file_id = (await r.json())["id"]
    create = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    async with api.http.post(f"{api.base}/v1/batches", json=create, headers=b) as r:
        assert r.status == 404  # B cannot run A's file
    async with api.http.post(f"{api.base}/v1/batches", json=create, headers=a) as r:
        assert r.status == 200
        batch_id = (await r.json())["id"]
    for headers, sees in ((a, True), (b, False), (op, True)):
        for path, listed in ((f"/v1/files/{file_id}", "/v1/files"),
                             (f"/v1/batches/{batch_id}", "/v1/batches")):  # fmt: skip
            async with api.http.get(api.base + path, headers=headers) as r:
                assert r.status == (200 if sees else 404)
            async with api.http.get(api.base + listed, headers=headers) as r:
                ids = [d["id"] for d in (await r.json())["data"]]
                assert (path.rsplit("/", 1)[1] in ids) is sees
    async with api.http.delete(f"{api.base}/v1/files/{file_id}", headers=b) as r:
        assert r.status == 404
    async with api.http.post(f"{api.base}/v1/batches/{batch_id}/cancel", headers=b) as r:
        assert r.status == 404


async def test_a_browser_cannot_drive_a_loopback_daemon_without_keys(start_daemon):
    """OC-AUTH-1304"""
    api = await start_daemon(mock_pool())
    drain = f"{api.base}/v1/pools/mock/drain"
    evil = {"Origin": "http://evil.example"}
    # a form post from any web page: text/plain, cross-origin — refused, nothing drained
    async with api.http.post(
        drain, data=b'{"deadline_ms": 1}', headers={**evil, "Content-Type": "text/plain"}
    ) as r:
        assert r.status in (403, 415)
    async with api.http.post(drain, data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and (await r.json())["code"] == "UNSUPPORTED_MEDIA_TYPE"
    async with api.http.post(drain, json={"deadline_ms": 1}, headers=evil) as r:
        assert r.status == 403 and (await r.json())["field"] == "Origin"
    # DNS rebinding: the page's own name, resolved to 127.0.0.1
    async with api.http.get(f"{api.base}/v1/pools", headers={"Host": "evil.example"}) as r:
        assert r.status == 403 and (await r.json())["field"] == "Host"
    assert not api.daemon.service.pools["mock"].draining
    # the same request from a program (no Origin, JSON) is served
    same = {"Origin": api.base}
    async with api.http.post(drain, json={"deadline_ms": 60_000}, headers=same) as r:
        assert r.status == 202
    assert api.daemon.service.pools["mock"].draining


def _config(tmp_path: Path, **server: Any) -> Path:
    path = tmp_path / "config.yaml"
    pool = mock_pool()
    path.write_text(yaml.safe_dump({"server": {"port": 0, **server}, "pools": [pool]}))
    return path


async def _serve(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        BIN / "orchestratord", "serve", *args, stderr=asyncio.subprocess.PIPE
    )


async def test_serving_off_loopback_without_keys_refuses_to_start(tmp_path):
    """OC-AUTH-1305"""
    proc = await _serve("--config", str(_config(tmp_path, host="0.0.0.0")))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "server.keys_file" in lines[0] and "--insecure" in lines[0]


async def test_a_missing_key_file_is_a_clear_start_up_error(tmp_path):
    """OC-AUTH-1305"""
    proc = await _serve("--config", str(_config(tmp_path, keys_file=str(tmp_path / "nope"))))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "does not exist" in err.decode() and "orchestratord keys create" in err.decode()


async def test_insecure_serves_off_loopback_and_warns(tmp_path):
    """OC-AUTH-1305"""
    proc = await _serve("--config", str(_config(tmp_path, host="0.0.0.0")), "--insecure")
    assert proc.stderr is not None
    seen = []
    try:
        async with asyncio.timeout(30):
            while not seen or "serving on" not in seen[-1]:
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
    finally:
        proc.terminate()
        await proc.wait()
    assert any("without API keys" in line and '"warning"' in line for line in seen)


async def test_quotas_hold_under_a_burst(start_daemon, tmp_path):
    """OC-AUTH-1306"""
    path = tmp_path / "keys.yaml"
    limited = {
        "busy": KeyLimits(max_concurrent=2),
        "queued": KeyLimits(max_queued=1),
        "tokens": KeyLimits(tokens_per_minute=1000),
    }
    entries, keys = [], {}
    for name, limits in limited.items():
        entry, keys[name] = make_entry(
            KeyCreate(tenant=name, roles=[KeyRole.SUBMIT], limits=limits)
        )
        entries.append(entry)
    write_entries(path, entries)
    api = await start_daemon(
        mock_pool(replicas={"managed": {"count": 1, "slots": 1}}), keys_file=str(path)
    )

    async def burst(key: str, n: int, **body: Any) -> list[tuple[int, Any, Any]]:
        async def one() -> tuple[int, Any, Any]:
            task = {"model": "mock-model", "prompt": "[[stall:0]]", **body}
            async with api.http.post(f"{api.base}/v1/tasks", json=task, headers=bearer(key)) as r:
                return r.status, await r.json(), r.headers

        return await asyncio.gather(*(one() for _ in range(n)))

    def refused(results: list[tuple[int, Any, Any]]) -> list[tuple[int, Any, Any]]:
        out = [x for x in results if x[0] != 202]
        for status, err, headers in out:
            assert status == 429 and err["code"] == "QUOTA_EXCEEDED", err
            assert int(headers["Retry-After"]) >= 1 and err["retriable"] is True
        return out

    results = await burst(keys["busy"], 6, max_tokens=4)
    assert len(refused(results)) == 4  # exactly two live at once
    admitted = [body["task_id"] for status, body, _ in results if status == 202]
    for task_id in admitted:
        async with api.http.post(
            f"{api.base}/v1/tasks/{task_id}/cancel", headers=bearer(keys["busy"])
        ) as r:
            assert r.status == 204
    for task_id in admitted:
        await api.wait_state(task_id, "canceled", headers=bearer(keys["busy"]))
    # ended tasks no longer count: two more fit (and stall, holding the pool's one slot)
    assert len(refused(await burst(keys["busy"], 2, max_tokens=4))) == 0
    # `queued`: with the slot taken, everything it sends waits: one may, three are refused
    assert len(refused(await burst(keys["queued"], 4, max_tokens=4))) == 3
    # 1000 tokens a minute, 250 a task (3 prompt tokens — 11 bytes at 4 a token — + 247):
    # four, and then none for the 15 s a task's worth takes to refill
    assert len(refused(await burst(keys["tokens"], 6, max_tokens=247))) == 2
    # one that could never fit is a plain 400 naming max_tokens
    status, err, _ = (await burst(keys["tokens"], 1, max_tokens=5000))[0]
    assert status == 400 and err["field"] == "max_tokens"


def test_token_quota_refills_and_gives_back_what_a_task_did_not_use():
    """OC-AUTH-1306"""
    now = [0.0]
    account = QuotaAccount("k", KeyLimits(tokens_per_minute=600), lambda: now[0])
    task = SimpleNamespace(state=TaskState.RUNNING, prompt_tokens=10)
    rec: Any = SimpleNamespace(ended=False, task=task, tokens_in=None, tokens_out=0)
    account.check(600)
    account.charge(rec, 600)
    with pytest.raises(Refusal) as refused:
        account.check(10)
    assert refused.value.code is ErrorCode.QUOTA_EXCEEDED
    assert refused.value.retry_after_ms == 1000  # 10 tokens, at 10 a second
    now[0] = 1000.0
    account.check(10)  # refilled
    with pytest.raises(Refusal):
        account.check(11)
    rec.ended, rec.tokens_in, rec.tokens_out = True, 10, 90  # used 100 of the 600 charged
    account.check(510)  # the 500 it did not use came back
    with pytest.raises(Refusal):
        account.check(511)


def test_keys_are_compared_in_constant_time(tmp_path, monkeypatch):
    """OC-AUTH-1307"""
    keys = make_keys(tmp_path / "keys.yaml", a=("acme", "submit"))
    ring = KeyRing(tmp_path / "keys.yaml")
    compared: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(x: str, y: str) -> bool:
        compared.append((x, y))
        return compare(x, y)

    monkeypatch.setattr(keyring.hmac, "compare_digest", spy)
    key = keys["a"]
    wrong_secret = key[:-4] + "AAAA"
    unknown_id = "orch-0000000000-" + key.rsplit("-", 1)[1]
    for presented, ok in ((key, True), (wrong_secret, False), (unknown_id, False),
                          ("not-a-key", False), ("", False)):  # fmt: skip
        compared.clear()
        assert (ring.authenticate(presented) is not None) is ok
        # exactly one comparison of two SHA-256 digests, whatever was presented
        assert len(compared) == 1 and all(len(d) == 64 for d in compared[0])
        assert compared[0][0] == hashlib.sha256(presented.encode()).hexdigest()
    stored = (tmp_path / "keys.yaml").read_text()
    # the secret is everything after `orch-<id>-` (its alphabet has `-` in it too)
    assert key not in stored and key.split("-", 2)[2] not in stored


async def test_no_key_or_prompt_is_logged_and_control_actions_are_audited(start_daemon, tmp_path):
    """OC-AUTH-1307, OC-AUTH-1308"""
    keys = make_keys(tmp_path / "keys.yaml", a=("acme", "submit"), boss=("ops", "admin"))
    secret_prompt = "the-launch-codes-are-0000"
    with capture_logs() as logs:
        api = await start_daemon(mock_pool(), keys_file=str(tmp_path / "keys.yaml"))
        body = {"model": "mock-model", "prompt": secret_prompt, "max_tokens": 2}
        async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=bearer(keys["a"])) as r:
            task_id = (await r.json())["task_id"]
        await api.events(task_id, headers=bearer(keys["a"]))
        async with api.http.post(f"{api.base}/v1/tasks", json=body,
                                 headers=bearer(keys["a"] + "x")) as r:  # fmt: skip
            assert r.status == 401
        boss = bearer(keys["boss"])
        async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={}, headers=boss) as r:
            assert r.status == 202
        async with api.http.post(f"{api.base}/v1/pools/mock/resume", headers=boss) as r:
            assert r.status == 202
        async with api.http.post(
            f"{api.base}/v1/pools/mock/reload", json={"model": "/etc/passwd"}, headers=boss
        ) as r:
            assert r.status == 400
        made = {"tenant": "new", "roles": ["read"]}
        async with api.http.post(f"{api.base}/v1/keys", json=made, headers=boss) as r:
            new_key = (await r.json())["key"]
    text = repr(logs)
    for secret in (keys["a"], keys["boss"], new_key, secret_prompt):
        assert secret not in text
    audited = [(e["who"], e["action"], e["result"]) for e in logs if e["event"] == "audit"]
    boss_id = keys["boss"].split("-")[1]
    assert audited == [
        (boss_id, "post /v1/pools/mock/drain", 202),
        (boss_id, "post /v1/pools/mock/resume", 202),
        (boss_id, "post /v1/pools/mock/reload", "INVALID_PARAMS"),
        (boss_id, "post /v1/keys", 201),
    ]


async def test_admins_make_list_and_revoke_keys_with_orchctl(start_daemon, tmp_path):
    """OC-AUTH-1309"""
    path = tmp_path / "keys.yaml"
    keys = make_keys(path, boss=("ops", "admin"))
    api = await start_daemon(mock_pool(), keys_file=str(path))
    (tmp_path / "boss.key").write_text(keys["boss"] + "\n")
    as_boss = ("--api-key-file", str(tmp_path / "boss.key"))
    code, out, err = await orchctl(
        api.base, *as_boss, "keys", "create", "--tenant", "acme", "--role", "submit",
        "--max-concurrent", "3",
    )  # fmt: skip
    assert code == 0, err
    new_key = out.strip()
    key_id = new_key.split("-")[1]
    assert new_key not in path.read_text()
    code, out, _ = await orchctl(api.base, "--api-key", new_key, "pools")
    assert code == 0 and "mock-model" in out
    code, out, _ = await orchctl(api.base, *as_boss, "keys", "list")
    assert code == 0 and key_id in out and "acme" in out and "max_concurrent=3" in out
    assert new_key.split("-", 2)[2] not in out
    code, _, err = await orchctl(api.base, "--api-key", new_key, "keys", "list")
    assert code == 4 and "FORBIDDEN" in err
    code, _, _ = await orchctl(api.base, *as_boss, "keys", "revoke", key_id)
    assert code == 0
    code, _, err = await orchctl(api.base, "--api-key", new_key, "pools")
    assert code == 4 and "UNAUTHORIZED" in err


async def test_the_key_file_is_reread_on_sighup(start_daemon, tmp_path):
    """OC-AUTH-1309"""
    path = tmp_path / "keys.yaml"
    first = make_keys(path, a=("acme", "read"))
    api = await start_daemon(mock_pool(), keys_file=str(path))
    second = make_keys(path, b=("bolt", "read"))  # replaces the file
    assert (await api.get("/v1/pools", headers=bearer(first["a"])))[0] == 200
    api.daemon.reload_keys()  # what SIGHUP calls
    assert (await api.get("/v1/pools", headers=bearer(first["a"])))[0] == 401
    assert (await api.get("/v1/pools", headers=bearer(second["b"])))[0] == 200
    path.write_text("keys: [{id: nonsense}]")
    api.daemon.reload_keys()  # a broken file leaves the keys as they were
    assert (await api.get("/v1/pools", headers=bearer(second["b"])))[0] == 200


async def test_a_drain_is_undone_by_resume(start_daemon):
    """OC-AUTH-1310"""
    api = await start_daemon(mock_pool())
    async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={"deadline_ms": 60_000}) as r:
        assert r.status == 202
    _, err, _ = await api.submit(expect=503, model="mock-model", prompt="x", max_tokens=2)
    assert err["code"] == "POOL_DRAINING"
    code, out, err_text = await orchctl(api.base, "resume", "mock")
    assert code == 0 and "resumed mock" in out, err_text
    _, pool = await api.get("/v1/pools/mock")
    assert pool["draining"] is False and all(r["state"] == "ready" for r in pool["replicas"])
    _, task, _ = await api.submit(model="mock-model", prompt="x", max_tokens=2)
    assert (await api.events(task["task_id"]))[-1][0] == "end"


async def test_a_drained_pool_stays_drained_through_a_reload_unless_asked(start_daemon):
    """OC-AUTH-1310"""
    api = await start_daemon(mock_pool(models={"v2": "mock-model-v2"}))
    dispatcher = api.daemon.service.pools["mock"]
    reload = f"{api.base}/v1/pools/mock/reload"
    async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={"deadline_ms": 60_000}) as r:
        assert r.status == 202
    async with api.http.post(reload, json={"model": "v2"}) as r:
        assert r.status == 202
    await dispatcher.reload_task
    _, pool = await api.get("/v1/pools/mock")
    assert pool["draining"] is True and pool["last_error"] is None
    assert all(r["state"] == "draining" for r in pool["replicas"])
    await api.submit(expect=503, model="mock-model", prompt="x")
    # the embedded default's way: the pool's own model name is a reference too
    async with api.http.post(reload, json={"model": "mock-model", "resume": True}) as r:
        assert r.status == 202
    await dispatcher.reload_task
    _, task, _ = await api.submit(model="mock-model", prompt="x", max_tokens=2)
    assert (await api.events(task["task_id"]))[-1][0] == "end"


async def test_a_reload_while_one_runs_is_a_conflict(start_daemon, monkeypatch):
    """OC-AUTH-1310"""
    api = await start_daemon(mock_pool())
    manager = api.daemon.service.pools["mock"].manager
    gate = asyncio.Event()
    reload = manager.reload

    async def held(model: str) -> None:  # the first reload waits until the test lets it go
        await gate.wait()
        await reload(model)

    monkeypatch.setattr(manager, "reload", held)
    url = f"{api.base}/v1/pools/mock/reload"
    async with api.http.post(url, json={"model": "mock-model"}) as r:
        assert r.status == 202
    async with api.http.post(url, json={"model": "mock-model"}) as r:
        err = await r.json()
        assert (
            r.status == 409 and err["code"] == "CONFLICT" and "already reloading" in err["message"]
        )
    gate.set()
    await api.daemon.service.pools["mock"].reload_task
    async with api.http.post(url, json={"model": "mock-model"}) as r:
        assert r.status == 202


def test_reload_takes_known_models_and_paths_under_model_dirs_only(tmp_path):
    """OC-AUTH-1310"""
    from orchestratord.config import PoolConfig
    from orchestratord.service.orchestrator import reload_target

    models = tmp_path / "models"
    models.mkdir()
    (models / "v2.gguf").write_bytes(b"GGUF")
    (tmp_path / "secret.gguf").write_bytes(b"GGUF")
    (models / "escape.gguf").symlink_to(tmp_path / "secret.gguf")
    pool = PoolConfig.model_validate({
        "id": "tiny", "engine": "llamacpp", "model": "tiny-llama",
        "models": {"big": "/srv/big.gguf"},
        "replicas": {"managed": {"model_path": "/srv/tiny.gguf"}},
    })  # fmt: skip
    dirs = [str(models)]
    assert reload_target(pool, "tiny-llama", dirs) == "/srv/tiny.gguf"
    assert reload_target(pool, "big", dirs) == "/srv/big.gguf"
    assert reload_target(pool, str(models / "v2.gguf"), dirs) == str(models / "v2.gguf")
    assert reload_target(pool, str(models / "later.gguf"), dirs) == str(models / "later.gguf")
    messages = set()
    for refused in (
        "/etc/passwd", "/nonexistent/x.gguf", str(tmp_path / "secret.gguf"),
        str(models / ".." / "secret.gguf"), str(models / "escape.gguf"), "v2.gguf", "tiny",
    ):  # fmt: skip
        with pytest.raises(Refusal) as e:
            reload_target(pool, refused, dirs)
        assert e.value.field == "model"
        messages.add(e.value.message)
    # one answer for every refusal: nothing about which files exist
    assert messages == {
        "pool 'tiny' may reload to one of ['big', 'tiny-llama'] or a GGUF path under "
        "server.model_dirs"
    }


async def test_tls_serves_https_with_the_configured_certificate(start_daemon, tmp_path):
    """OC-AUTH-1311"""
    import ssl

    import trustme

    authority = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = authority.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    api = await start_daemon(mock_pool(), ready=False, tls={"cert": str(cert), "key": str(key)})
    assert api.daemon.url.startswith("https://")
    https = f"https://127.0.0.1:{api.daemon.port}"
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{https}/healthz", ssl=trusted) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ServerDisconnectedError):  # plain HTTP is not answered
            async with client.get(f"{https.replace('https', 'http')}/healthz") as r:
                await r.read()

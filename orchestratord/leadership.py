"""Leadership among daemons sharing one PostgreSQL database: who runs the queues.

One daemon leads (it holds the lease, `store.lease`, kept on the database's clock); the
others stand by, answering 503 `NOT_LEADER` with the leader's URL, and try to take the lease
every `poll_s` (at most a second). The leader renews every `renew_s` (a third of the lease).
It counts itself leader only until `valid_until` — the local monotonic instant at which it
*sent* its last successful renewal, plus 90% of the lease: the database stamps the renewal
later than that, so the leader's own deadline always falls before the instant a standby may
take over, by a tenth of the lease (what tolerates a difference in clock *rates*; the
clocks' readings never meet).

The daemon reads `valid()` before every dispatch and every admission, so a leader that was
paused past its lease does nothing once it wakes, whichever of its callbacks runs first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import psycopg
import structlog

from orchestratord.store.lease import LeaderLease

log = structlog.get_logger("orchestratord")

#: The share of the lease a leader trusts itself with (the rest covers clock-rate drift).
TRUSTED_SHARE = 0.9


def holder_name() -> str:
    """This process's unique name in the lease row (host, pid and a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership:
    def __init__(self, lease: LeaderLease, lease_s: float) -> None:
        self._lease = lease
        self.lease_s = lease_s
        self.renew_s = lease_s / 3
        #: How often a standby tries the lease: a clean handover (`resign`) is taken at
        #: once, whatever the lease.
        self.poll_s = min(self.renew_s, 1.0)
        #: The term held now; None while standing by.
        self.epoch: int | None = None
        #: Where the leader is reached, as last seen (None: unknown, or nobody leads).
        self.leader_url: str | None = None
        self._loop = asyncio.get_running_loop()
        self._valid_until = 0.0
        self._lost: asyncio.Future[str] | None = None

    def valid(self) -> bool:
        """Leading, and the lease certainly still ours (no database round trip)."""
        return self.epoch is not None and self._loop.time() < self._valid_until

    async def acquire(self) -> int:
        """Stand by until the lease is ours; the new term's epoch."""
        unreachable = False
        while True:
            sent = self._loop.time()
            try:
                attempt = await asyncio.to_thread(self._lease.acquire)
            except psycopg.Error as e:
                if not unreachable:  # said once per outage, not once a second
                    log.warning("leader election: the database is unreachable",
                                error=str(e).strip())  # fmt: skip
                unreachable, self.leader_url = True, None
            else:
                if unreachable:
                    log.info("leader election: the database is back")
                unreachable = False
                if attempt.epoch is not None:
                    self.epoch, self.leader_url = attempt.epoch, attempt.leader_url
                    self._valid_until = sent + self.lease_s * TRUSTED_SHARE
                    self._lost = self._loop.create_future()
                    return self.epoch
                if attempt.leader_url != self.leader_url:
                    log.info("standing by", leader=attempt.leader_url)
                self.leader_url = attempt.leader_url
            await asyncio.sleep(self.poll_s)

    async def hold(self) -> str:
        """Renew the lease until it is lost; why it was (the term is over then)."""
        assert self.epoch is not None and self._lost is not None
        epoch, lost = self.epoch, self._lost
        try:
            while not lost.done():
                left = self._valid_until - self._loop.time()
                if left <= 0:
                    return "the lease ran out before it was renewed"
                await asyncio.wait([lost], timeout=min(self.renew_s, left))
                if lost.done():
                    break
                why = await self._renew(epoch)
                if why is not None:
                    return why
            return lost.result()
        finally:
            self.epoch = None
            self._valid_until = 0.0

    def lose(self, why: str) -> None:
        """The term is over, now (the store can no longer write)."""
        self._valid_until = 0.0  # nothing more is dispatched, even before `hold` returns
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    async def resign(self, epoch: int) -> None:
        """Give the lease up (a clean stop), so a standby takes over at once."""
        try:
            await asyncio.to_thread(self._lease.resign, epoch)
        except psycopg.Error as e:  # it runs out on its own
            log.warning("could not give the lease up", error=str(e).strip())

    def close(self) -> None:
        self._lease.close()

    async def _renew(self, epoch: int) -> str | None:
        sent = self._loop.time()
        left = self._valid_until - sent
        try:
            async with asyncio.timeout(left):
                renewed = await asyncio.to_thread(self._lease.renew, epoch)
        except TimeoutError:
            return "the database did not answer before the lease ran out"
        except psycopg.Error as e:
            return f"the database is unreachable: {str(e).strip()}"
        if not renewed:
            return "deposed: another daemon holds the lease"
        if self._loop.time() >= self._valid_until:
            # it came back too late: meanwhile the gate refused dispatches that nothing
            # would retry. A term whose gate closed once is over (it never reopens).
            return "the lease ran out before its renewal came back"
        self._valid_until = sent + self.lease_s * TRUSTED_SHARE
        return None

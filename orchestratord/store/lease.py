"""The leader lease: one row in PostgreSQL (`orch_leader`) that daemons sharing a database
take, renew and give back — on the database's clock, never their own.

A lease row rather than a session-level advisory lock: a paused leader (SIGSTOP, a long GC,
a frozen VM) keeps its session and would keep an advisory lock for as long as it stays
paused; a lease runs out. Each acquisition bumps the `epoch`, which fences the store's
writes (`orch_fence`, `store.postgres`). Blocking calls on a connection of their own; the
daemon runs them in a thread (`orchestratord.leadership`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from orchestratord.store.base import StoreError
from orchestratord.store.postgres import PgConnection, connect, migrate, redacted

_ACQUIRE = """
UPDATE orch_leader SET holder = %(me)s, url = %(url)s, epoch = epoch + 1,
    expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = 1 AND (expires_at < clock_timestamp() OR holder = %(me)s)
RETURNING epoch
"""
_RENEW = """
UPDATE orch_leader SET expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = 1 AND holder = %(me)s AND epoch = %(epoch)s
RETURNING epoch
"""
_RESIGN = """
UPDATE orch_leader SET expires_at = '-infinity'
WHERE id = 1 AND holder = %(me)s AND epoch = %(epoch)s
"""
_LEADER = "SELECT url FROM orch_leader WHERE id = 1 AND expires_at >= clock_timestamp()"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What an acquisition found: the epoch won, or who leads (None: nobody does)."""

    epoch: int | None
    leader_url: str | None


class LeaderLease:
    """`me`: this process's unique holder name; `url`: where clients reach it."""

    def __init__(self, url: str, me: str, advertised: str, lease_s: float) -> None:
        self.location = redacted(url)
        self._url = url
        self._params = {"me": me, "url": advertised, "lease": lease_s}
        # a statement that outlives a third of the lease is of no use to anybody
        self._timeout_ms = max(int(lease_s * 1000 / 3), 100)
        self._conn: PgConnection | None = None

    def advertise(self, url: str) -> None:
        """Where clients reach this daemon (known once it listens)."""
        self._params["url"] = url

    def open(self) -> None:
        """Connect and migrate (the lease table is a migration); StoreError if it cannot."""
        conn = self._session()
        try:
            migrate(conn, self.location)
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"task store {self.location} cannot be used: {e}") from None

    def acquire(self) -> Attempt:
        """Take the lease if it ran out (or is ours): a new epoch. Raises psycopg.Error."""
        conn = self._connected()
        row = self._run(conn, _ACQUIRE, self._params)
        if row is not None:
            return Attempt(int(str(row[0])), str(self._params["url"]))
        leader = self._run(conn, _LEADER, {})
        return Attempt(None, None if leader is None else str(leader[0]))

    def renew(self, epoch: int) -> bool:
        """Extend our lease; False: it is no longer ours. Raises psycopg.Error."""
        return self._run(self._connected(), _RENEW, {**self._params, "epoch": epoch}) is not None

    def resign(self, epoch: int) -> None:
        """Give the lease up now (a clean stop), so a standby need not wait it out."""
        self._run(self._connected(), _RESIGN, {**self._params, "epoch": epoch}, fetch=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _session(self) -> PgConnection:
        timeout = max(int(self._timeout_ms / 1000), 1)
        return connect(self._url, timeout)

    def _connected(self) -> PgConnection:
        """The lease's connection, opened again after the database went away."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            try:
                self._conn = self._session()
            except StoreError as e:
                raise psycopg.OperationalError(str(e)) from None
            self._conn.execute(f"SET statement_timeout = {self._timeout_ms}")
        return self._conn

    def _run(
        self, conn: PgConnection, sql: str, params: dict[str, object], *, fetch: bool = True
    ) -> tuple[object, ...] | None:
        try:
            cursor = conn.execute(sql, params)
            return cursor.fetchone() if fetch else None
        except psycopg.Error:
            self.close()  # whatever it was, start from a fresh session next time
            raise

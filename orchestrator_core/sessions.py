"""Session affinity: which replica served a session last, and whether its KV is warm."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class SessionInfo:
    id: str
    replica_id: str | None = None
    turns: int = 0
    last_used_ms: float = 0.0


class SessionTable:
    """Bounded LRU of sessions. A replica's KV for a session counts as warm for
    `warm_ms` after its last turn; a session is forgotten after `ttl_ms` idle."""

    def __init__(
        self, *, warm_ms: float = 300_000, ttl_ms: float = 3_600_000, max_sessions: int = 100_000
    ) -> None:
        self.warm_ms = warm_ms
        self.ttl_ms = ttl_ms
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, SessionInfo] = OrderedDict()

    def get(self, session_id: str, now_ms: float) -> SessionInfo | None:
        info = self._sessions.get(session_id)
        if info is not None and now_ms - info.last_used_ms > self.ttl_ms:
            del self._sessions[session_id]
            return None
        return info

    def warm_replica(self, session_id: str | None, now_ms: float) -> str | None:
        """The replica whose KV likely still holds this session, if any."""
        if session_id is None:
            return None
        info = self.get(session_id, now_ms)
        if info is None or now_ms - info.last_used_ms > self.warm_ms:
            return None
        return info.replica_id

    def kv_warmth(self, info: SessionInfo, now_ms: float) -> float:
        """1.0 just after a turn, falling linearly to 0.0 when the KV is presumed cold."""
        if info.replica_id is None:
            return 0.0
        return max(0.0, 1.0 - (now_ms - info.last_used_ms) / self.warm_ms)

    def record_turn(self, session_id: str, replica_id: str, now_ms: float) -> None:
        info = self._sessions.pop(session_id, None) or SessionInfo(session_id)
        info.replica_id = replica_id
        info.turns += 1
        info.last_used_ms = now_ms
        self._sessions[session_id] = info
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def forget_replica(self, replica_id: str) -> None:
        """A replica restarted or left: its KV is gone."""
        for info in self._sessions.values():
            if info.replica_id == replica_id:
                info.replica_id = None

    def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

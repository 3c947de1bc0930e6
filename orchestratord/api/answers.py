"""Large answers being written, bounded in bytes across every connection at once.

An answer is handed whole to its connection's transport, which holds whatever the client
has not taken yet. `server.max_output_bytes` bounds one task's status, but
`max_connections` clients fetching it at once — or reading it slowly — would have the
transports hold gigabytes. `AnswerBudget` bounds the large answers being written at
`server.answer_buffer_bytes`. Each reserves twice its length — its body, and the copy
aiohttp hands the transport, joined with the head — from when its handler returns it until
the transport has taken all but its high-water mark of it (aiohttp's `write_eof` waits for
that). One that would pass the budget is answered 503 `OVERLOADED` with
`Retry-After` instead, and its body is dropped at once: bodies are built one at a time on
the loop's thread, so at most one is ever held unreserved. Where an answer's length is known
before it is built (a task's status: its output), it is refused before (`expect`): building
is the expensive part, and a hundred clients asking for an 8 MiB status at once had the
loop build for seconds.

An answer smaller than `LARGE` goes out as before: a socket takes it at once, and the
transport's flow control bounds what a connection holds. Neither a stream (never whole:
`api.streaming` writes it a piece at a time) nor a file (aiohttp sends it a chunk at a
time) is reserved.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord.service import Refusal

#: Answers at least this long are reserved: a transport's high-water mark (uvloop's and
#: asyncio's default), what a connection holds anyway before its writes wait.
LARGE = 64 << 10
#: An answer is held this many times while it is written: its body, and the copy aiohttp
#: hands the transport, joined with its head.
COPIES = 2
#: How long a client refused for the budget should wait: the answers ahead of it are
#: taken, or dropped by `write_timeout_s`, in about that.
RETRY_AFTER_MS = 1000


class AnswerBudget:
    """Bytes reserved for large answers being written; at most `limit`."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes reserved now (the `response_body_bytes` gauge).
        self.held = 0

    def expect(self, length: int) -> None:
        """Refuse now an answer of about `length` bytes that would be refused once built:
        building a large answer costs its length in time and memory whatever becomes of it
        (an 8 MiB task status, some 30 ms of the loop's time)."""
        if length >= LARGE and self.held and self.held + COPIES * length > self.limit:
            raise refusal()

    def reserve(self, size: int) -> bool:
        """Reserve `size` bytes; False when that would pass the budget. An answer larger
        than the whole budget is reserved when nothing else is, so it is served at all."""
        if self.held and self.held + size > self.limit:
            return False
        self.held += size
        return True

    async def send(self, request: web.Request, answer: web.Response, length: int) -> bool:
        """Write `answer` (`length` bytes of body) holding `COPIES` times that until the
        transport has taken all but its high-water mark (or the client went away), then let
        go of its body, which aiohttp would keep, with the answer, while the connection
        waits for its next request. False, and nothing written, when the reservation would
        pass the budget."""
        held = COPIES * length
        if not self.reserve(held):
            return False
        try:
            await answer.prepare(request)
            await answer.write_eof()
        except ConnectionError:
            pass  # the client went away: aiohttp, finishing the answer, logs it so
        finally:
            answer.body = None
            self.held -= held
        return True


def refusal() -> Refusal:
    """What a client is told when the budget has no room for its answer."""
    return Refusal(
        ErrorCode.OVERLOADED,
        "answers being written fill server.answer_buffer_bytes; retry shortly",
        retry_after_ms=RETRY_AFTER_MS,
    )


def whole_answer(answer: web.StreamResponse) -> tuple[web.Response, int] | None:
    """A whole answer not written yet, and its length; None for anything else (streams,
    files, answers already under way)."""
    if answer.prepared or not isinstance(answer, web.Response):
        return None
    return answer, answer.content_length or 0


#: The application's budget, used by `app.answer_budget`.
ANSWERS: web.AppKey[AnswerBudget] = web.AppKey("answers", AnswerBudget)

"""A batch input file, checked line by line as it is uploaded: every line must be a
request this daemon can run, so a batch never fails halfway on a line it could have
refused at once. Problems are reported per line; a file with any is not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from hashlib import blake2b
from typing import IO

from pydantic import ValidationError

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Priority
from orchestratord.batch_models import BatchInputLine, Endpoint
from orchestratord.openai_models import ChatCompletionRequest, CompletionRequest
from orchestratord.service.admission import Submission
from orchestratord.service.openai_requests import submission
from orchestratord.service.refusal import Refusal

#: Problems named in the refusal (the count covers every one).
_SHOWN = 20

_REQUEST: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


def item_submission(
    line: BatchInputLine, *, tenant: str, correlation_id: str, **extra: object
) -> Submission:
    """The batch-priority task a line asks for (or a Refusal naming the field)."""
    try:
        req = _REQUEST[line.url].model_validate(line.body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Refusal(
            ErrorCode.INVALID_PARAMS, f"body.{where}: {err['msg']}", field=f"body.{where}"
        ) from None
    if req.stream:
        raise Refusal(ErrorCode.INVALID_PARAMS, "body.stream: not in a batch", field="body.stream")
    return submission(
        req, tenant=tenant, correlation_id=correlation_id, priority=Priority.BATCH, **extra
    )


class InputCheck:
    """Feed it the file's lines in order; `verdict()` says what the file holds, or raises
    a Refusal listing the bad lines."""

    def __init__(self, serves: Callable[[str], bool]) -> None:
        self._serves = serves
        self.lines = 0
        self.problems: list[str] = []
        self._problem_count = 0
        #: 8-byte digests of the custom ids seen (a million lines: a few tens of MB).
        self._seen: dict[bytes, int] = {}
        self._endpoints: set[str] = set()

    def _problem(self, line: int, what: str) -> None:
        self._problem_count += 1
        if len(self.problems) < _SHOWN:
            self.problems.append(f"line {line}: {what}")

    def line(self, raw: bytes) -> None:
        self.lines += 1
        number = self.lines
        if not raw.strip():
            self._problem(number, "empty line")
            return
        try:
            item = BatchInputLine.model_validate_json(raw)
        except ValidationError as e:
            self._problem(number, _first_error(e))
            return
        digest = blake2b(item.custom_id.encode(), digest_size=8).digest()
        first = self._seen.setdefault(digest, number)
        if first != number:
            self._problem(number, f"custom_id {item.custom_id!r} repeats line {first}")
        self._endpoints.add(item.url)
        try:
            sub = item_submission(item, tenant="-", correlation_id="-")
        except Refusal as e:
            self._problem(number, e.message)
            return
        if not self._serves(sub.model):
            self._problem(number, f"body.model {sub.model!r} is not served here")

    def verdict(self) -> tuple[int, Endpoint]:
        """(lines, the endpoint they all name); or a Refusal listing the problems."""
        if not self.lines:
            self._problem(1, "the file holds no requests")
        if len(self._endpoints) > 1:
            self._problem(self.lines, f"lines name several urls: {sorted(self._endpoints)}")
        if self._problem_count:
            shown = "; ".join(self.problems)
            more = self._problem_count - len(self.problems)
            raise Refusal(
                ErrorCode.INVALID_PARAMS,
                f"{self._problem_count} invalid line(s): {shown}"
                + (f"; and {more} more" if more else ""),
                field="file",
            )
        (endpoint,) = self._endpoints
        return self.lines, endpoint  # type: ignore[return-value]  # validated as an Endpoint


#: Refusals that pass: a pool drained by an operator, or with no replica yet (its agents
#: have not joined, or it is starting). A batch waits them out (its window bounds the wait).
_PASSING = frozenset({ErrorCode.POOL_UNAVAILABLE, ErrorCode.POOL_DRAINING})
_PASSING_RETRY_S = 1.0


def feed_later(refused: Refusal) -> float | None:
    """Seconds to wait before feeding a refused line again, for a refusal that passes (a
    full queue, a pool drained or not served yet); None: the line itself cannot run."""
    if refused.retry_after_ms is not None:  # the queue is full
        return refused.retry_after_ms / 1000
    return _PASSING_RETRY_S if refused.code in _PASSING else None


def lines_from(source: IO[bytes], offset: int | None, *, skip: int) -> Iterator[tuple[bytes, int]]:
    """(line, offset after it) from byte `offset` on — or, where it is not known (after a
    restart), after the first `skip` lines."""
    if offset is None:
        for _ in range(skip):
            source.readline()
    else:
        source.seek(offset)
    while raw := source.readline():
        yield raw, source.tell()


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "line"
    return f"{where}: {err['msg']}"

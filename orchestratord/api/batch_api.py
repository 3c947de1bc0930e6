"""The Batch API, as OpenAI's Files and Batches references define it: `/v1/files`
(multipart upload with `purpose=batch`, checked line by line; metadata; content; delete)
and `/v1/batches` (create, get, list with cursor pagination, cancel). Errors come in
OpenAI's shape, like the rest of the OpenAI door.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from orchestrator_core.errors import ErrorCode
from orchestratord.api.http import json_response, parse, principal_of
from orchestratord.batch_models import BatchCreate
from orchestratord.service import Orchestrator, Refusal

FILES, BATCHES = "/v1/files", "/v1/batches"
_READ = 1 << 16
T = TypeVar("T")


def _invalid(message: str, field: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_PARAMS, message, field=field)


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await _malformed_is_400(part.read_chunk(_READ)):
        yield chunk


async def _malformed_is_400(step: Awaitable[T]) -> T:
    """A malformed multipart body is the client's error (400), never ours."""
    try:
        return await step
    except (ValueError, HttpProcessingError) as e:
        raise _invalid(f"malformed multipart body: {e}", "file") from None


async def _parts(request: web.Request) -> AsyncIterator[BodyPartReader]:
    reader = await _malformed_is_400(request.multipart())
    while (part := await _malformed_is_400(reader.next())) is not None:
        if not isinstance(part, BodyPartReader):
            raise _invalid("nested multipart is not supported", "file")
        yield part


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    batches = svc.batches
    files = batches.files

    async def upload(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise _invalid("upload the file as multipart/form-data", "file")
        purpose = None
        async for part in _parts(request):
            if part.name == "purpose":
                purpose = (await _malformed_is_400(part.text())).strip()
            elif part.name == "file":
                if purpose != "batch":  # the SDK sends `purpose` first, as OpenAI's does
                    raise _invalid("purpose must be 'batch' (sent before the file)", "purpose")
                name = part.filename or "input.jsonl"
                doc = await files.upload(name, _chunks(part), principal_of(request))
                return json_response(doc)
            else:
                raise _invalid(f"unexpected form field {part.name!r}", part.name or "form")
        raise _invalid("no file in the upload", "file")

    async def list_files(request: web.Request) -> web.Response:
        return json_response(files.listing(principal_of(request)))

    async def get_file(request: web.Request) -> web.Response:
        return json_response(files.get(request.match_info["file_id"], principal_of(request)))

    async def file_content(request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        files.get(file_id, principal_of(request))
        path = await files.local(file_id)
        return web.FileResponse(path, headers={"Content-Type": "application/jsonl"})

    async def delete_file(request: web.Request) -> web.Response:
        return json_response(files.delete(request.match_info["file_id"], principal_of(request)))

    async def create(request: web.Request) -> web.Response:
        req = await parse(request, BatchCreate)
        return json_response(await batches.create(req, principal_of(request)))

    async def get(request: web.Request) -> web.Response:
        return json_response(batches.get(request.match_info["batch_id"], principal_of(request)))

    async def listing(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise _invalid("limit must be an integer", "limit") from None
        if not 1 <= limit <= 100:
            raise _invalid("limit must be between 1 and 100", "limit")
        after = request.query.get("after")
        return json_response(batches.listing(after, limit, principal_of(request)))

    async def cancel(request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        return json_response(await batches.cancel(batch_id, principal_of(request)))

    return [
        web.post(FILES, upload),
        web.get(FILES, list_files),
        web.get(FILES + "/{file_id}", get_file),
        web.get(FILES + "/{file_id}/content", file_content),
        web.delete(FILES + "/{file_id}", delete_file),
        web.post(BATCHES, create),
        web.get(BATCHES, listing),
        web.get(BATCHES + "/{batch_id}", get),
        web.post(BATCHES + "/{batch_id}/cancel", cancel),
    ]

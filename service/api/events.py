"""Server-Sent Events: `GET /api/v1/jobs/{id}/stream` and `GET /api/v1/events`.

Event types: `job` (the whole job, as `GET /api/v1/jobs/{id}` shows it: first on a new stream of
one job, and last, when the job has reached its terminal state), `status` (a row of the job's
history), `progress`, and `gap` (a resumed `/events` stream skipped older events). Every event's
id is a cursor: send it back as `Last-Event-ID` to resume. Comments (`: keep-alive`) are sent
when there is nothing to say, so that proxies keep the stream open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.status_codes import HTTP_204_NO_CONTENT

from service import auth, errors, events, jobs
from service.api import access, schemas
from service.api.openapi import answers
from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings

RETRY_MS = 2000
"""How long a disconnected EventSource waits before it reconnects (sent once per stream)."""

LastEventId = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", required=False,
                    description="Resume after this event (the id of the last event received)."),
]

_encoder = msgspec.json.Encoder()


def provide_hub(state: State, settings: NamedDependency[Settings]) -> events.EventHub:
    """The process's one hub, made on first use (it connects when a stream first subscribes)."""
    if getattr(state, "hub", None) is None:
        state.hub = events.EventHub(state.backend.database_url,
                                    settings.stream_heartbeat.total_seconds())
    return state.hub


def end_streams(app: Litestar) -> None:
    """Called when the process is asked to stop: open streams end, so the HTTP server can."""
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        hub.end_streams()


@get(f"{schemas.API}/jobs/{{job_id:str}}/stream", tags=["jobs"],
     summary="Follow a job: Server-Sent Events until its terminal state",
     description="Events `job` (the whole job: first, and last once it is finished), `status` "
     "and `progress`. A finished job sends its final state at once. Resume with "
     "`Last-Event-ID`; 204 when the stream has nothing left to send.",
     responses={**answers(str, 404, 422, media_type="text/event-stream",
                          description="Server-Sent Events"),
                204: ResponseSpec(None, description="Nothing left to send (the job finished "
                                  "before the event named by Last-Event-ID)")},
     opt=access.rule("submitter"))
async def job_stream(
    backend: NamedDependency[Backend], hub: NamedDependency[events.EventHub],
    settings: NamedDependency[Settings], principal: NamedDependency[auth.Principal],
    job_id: FromPath[str], last_event_id: LastEventId = None,
) -> Response:
    job = schemas.parse_job_id(job_id)
    cursor = events.Cursor.parse(last_event_id) if last_event_id else None
    await jobs.get_job(backend, job, principal.scope)  # 404 before the stream starts
    if cursor is not None and not await events.has_news(backend, job, cursor):
        # The client saw the terminal state already: 204 tells an EventSource to stop.
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    items = events.follow_job(hub, backend, job, cursor,
                              settings.stream_heartbeat.total_seconds())
    return ServerSentEvent(_messages(items, principal))


@get(f"{schemas.API}/events", tags=["jobs"],
     summary="Follow every job: Server-Sent Events, filtered by queue and type",
     description="Events `status` and `progress` of every job (of the given queues and types "
     "only, if any are given; repeat the parameter for several). From now on, or after "
     "`Last-Event-ID` (at most 10,000 events back; a `gap` event says what was skipped). "
     "A submitter's stream carries its own jobs only.",
     responses=answers(str, 422, media_type="text/event-stream",
                       description="Server-Sent Events"),
     opt=access.rule("submitter"))
async def all_events(
    backend: NamedDependency[Backend], hub: NamedDependency[events.EventHub],
    settings: NamedDependency[Settings], principal: NamedDependency[auth.Principal],
    queue: Annotated[list[str] | None, QueryParameter(description="only these queues")] = None,
    job_type: Annotated[list[str] | None,
                        QueryParameter(name="type", description="only these job types")] = None,
    last_event_id: LastEventId = None,
) -> ServerSentEvent:
    queues = frozenset(queue or ())
    for name in queues:
        if not jobs.QUEUE_NAME.match(name):
            raise errors.InvalidRequest(
                f"Queue {name!r} is not a queue name: 1-128 letters, digits, '_', '.' or '-'.",
                [errors.FieldError("queue", "invalid queue name")])
    types = frozenset(job_type or ())
    for name in types:
        jobtypes.get(name)  # UnknownJobType lists the known ones
    cursor = events.Cursor.parse(last_event_id) if last_event_id else None
    items = events.follow_all(hub, backend, queues, types, cursor,
                              settings.stream_heartbeat.total_seconds(), principal.scope)
    return ServerSentEvent(_messages(items, principal))


async def _messages(items: AsyncIterator[events.Item],
                    principal: auth.Principal) -> AsyncIterator[ServerSentEventMessage]:
    first = True
    async for item in items:
        retry = RETRY_MS if first else None
        first = False
        if item.kind == "heartbeat":
            yield ServerSentEventMessage(data=None, comment="keep-alive", id=str(item.cursor),
                                         retry=retry)
            continue
        yield ServerSentEventMessage(data=_encoder.encode(_json(item, principal)).decode(),
                                     event=item.kind, id=str(item.cursor), retry=retry)


def _json(item: events.Item, principal: auth.Principal) -> dict[str, Any]:
    data = item.data
    if item.kind == "job":
        return schemas.job_json(data, principal)
    if item.kind == "status":
        internals = schemas.shows_internals(principal)
        return {"job_id": str(data.job_id), "queue": data.queue, "type": data.type,
                "event": data.event, "status": data.status, "at": schemas.timestamp(data.at),
                "attempt": data.attempt, "worker": data.worker if internals else None,
                "message": (data.message if internals or data.message is None
                            else schemas.scrub_paths(data.message)),
                "error": schemas.public_error(data.error, principal)}
    if item.kind == "progress":
        return {"job_id": str(data.job_id), "queue": data.queue, "type": data.type,
                "progress": data.progress, "stage": data.stage, "message": data.message,
                "at": schemas.timestamp(data.at)}
    return data

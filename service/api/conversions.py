"""Routes for conversions: upload, formats, and a job's output file."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service import auth, conversions, errors
from service.api import access, forms, schemas, shapes
from service.api.openapi import answers
from service.backend import Backend
from service.domain import formats, limits
from service.settings import Settings
from service.storage import PostgresFileStore

# The multipart body may hold the files plus a little form data.
FORM_OVERHEAD = 1_000_000


async def read_form(request: Request, settings: Settings) -> forms.Form:
    """The form, read as it arrives with every limit enforced while streaming (see
    service/api/forms.py); `options` is checked for depth and NUL. Close it when done."""
    form = await forms.read_form(request, forms.Limits(body_bytes=upload_limit(settings),
                                                        file_bytes=settings.max_upload_bytes))
    try:
        _check_options(form.fields.get("options"))
    except BaseException:
        await form.close()
        raise
    return form


def uploads(form: forms.Form) -> list[conversions.Upload]:
    return [conversions.Upload(part.filename, part.content_type, part.chunks())
            for part in form.files]


def _check_options(raw: str | None) -> None:
    """`options` nested too deep or holding NUL; whether it is a JSON object at all is
    conversions.parse_options's to say."""
    if not raw:
        return
    try:
        value = msgspec.json.decode(raw)
    except RecursionError:
        raise schemas.too_deep("options") from None
    except msgspec.DecodeError:
        return
    found = limits.json_problem(value, "options")
    if found:
        raise errors.InvalidRequest(f"{found[0]}: {found[1]}.", [errors.FieldError(*found)])


def upload_limit(settings: Settings) -> int:
    return settings.max_upload_bytes + FORM_OVERHEAD


FORM_FIELDS = {"format", "options", "reuse", "timeout_seconds", *conversions.JOB_FIELDS}
"""Every form field /api/v1/conversions reads besides `file`; any other is a 422."""


@post(f"{schemas.API}/conversions", status_code=HTTP_201_CREATED, tags=["conversions"],
      summary="Upload a mesh and convert it in the background",
      description="multipart/form-data: `file` (one or more parts: the mesh with its .mtl, .bin "
      "or textures, or one .zip), `format` (target), optional `options` (JSON object), "
      "`reuse` (false to convert again even if the same input was converted before), "
      "`timeout_seconds`, and the common job options `priority`, `max_attempts`, "
      "`delay_seconds` or `run_at`, `key`, `callback_url`, `queue`, `backoff` (JSON object). "
      "Any other field is a 422 naming it. 201 with the job; 200 with the existing job when "
      "`key` names one.",
      request_max_body_size=None,
      responses=answers(shapes.Job, 409, 413, 422, status=201, also={200: shapes.Job}),
      opt={**access.rule("submitter"), "form": shapes.CONVERSION_FORM})
async def create_conversion(
    request: Request, backend: NamedDependency[Backend], settings: NamedDependency[Settings],
    principal: NamedDependency[auth.Principal],
) -> Response[dict[str, Any]]:
    await check_length(request, settings, backend, principal)
    async with auth.upload_slot(backend, principal):
        return await _create_conversion(request, backend, settings, principal)


async def _create_conversion(request: Request, backend: Backend, settings: Settings,
                             principal: auth.Principal) -> Response[dict[str, Any]]:
    async with await read_form(request, settings) as form:
        fields = form.fields
        conversions.check_fields(fields, FORM_FIELDS)
        reuse = fields.get("reuse", "true").strip().lower()
        if reuse not in ("true", "false"):
            raise errors.InvalidRequest(f"reuse must be true or false, got {reuse!r}.",
                                        [errors.FieldError("reuse", "not true or false")])
        job, created = await conversions.submit_conversion(
            backend, uploads(form), fields.get("format"),
            conversions.parse_options(fields.get("options")), settings.max_upload_bytes,
            reuse=reuse == "true",
            timeout_seconds=conversions.parse_seconds(fields.get("timeout_seconds"),
                                                      "timeout_seconds"),
            job=conversions.job_options(fields), principal=principal)
    body = schemas.job_json(job, principal)
    return Response(body, status_code=HTTP_201_CREATED if created else HTTP_200_OK,
                    headers={"Location": body["links"]["self"]})


async def check_length(request: Request, settings: Settings, backend: Backend,
                       principal: auth.Principal) -> None:
    """Before reading a body: 413 when its announced length is over the limit, 429 when it
    cannot fit in what is left of the key's upload bytes for the day."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > upload_limit(settings):
        raise errors.FileTooLarge("upload", settings.max_upload_bytes)
    if length and length.isdigit():
        await auth.upload_room(backend, principal, max(0, int(length) - FORM_OVERHEAD))


@get(f"{schemas.API}/formats", tags=["conversions"], summary="Formats that convert",
     responses=answers(shapes.Formats),
     opt=access.rule("submitter"))
async def list_formats() -> dict[str, list[str]]:
    return {"input": sorted(formats.INPUT_FORMATS), "output": sorted(formats.OUTPUT_FORMATS)}


@get(f"{schemas.API}/jobs/{{job_id:str}}/output", tags=["jobs"],
     summary="Download a job's output file",
     responses=answers(bytes, 404, media_type=formats.OUTPUT_MEDIA[0],
                       description="The file, as the media type of its format"),
     opt={**access.rule("submitter"), "media": {200: formats.OUTPUT_MEDIA[1:]}})
async def job_output(backend: NamedDependency[Backend], principal: NamedDependency[auth.Principal],
                     job_id: FromPath[str]) -> Stream:
    info, filename = await conversions.output(backend, schemas.parse_job_id(job_id),
                                              principal.scope)
    return Stream(
        PostgresFileStore(backend).read(info.id),
        media_type=info.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(info.size),
            "X-Content-SHA256": info.sha256,
        },
    )

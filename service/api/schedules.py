"""Routes of `/api/v1/schedules`: recurring jobs (docs/queues.md)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from service import schedules
from service.api import access, schemas, shapes
from service.api.openapi import answers
from service.backend import Backend
from service.domain.schedules import Schedule, ScheduleBody


class SchedulesController(Controller):
    path = f"{schemas.API}/schedules"
    tags = ["schedules"]
    opt = access.rule("operator")

    @get("/", summary="Every schedule, with its last and next tick",
         responses=answers(shapes.Schedules))
    async def list_schedules(self, backend: NamedDependency[Backend]) -> dict[str, Any]:
        return {"items": await schedules.list_all(backend)}

    @post("/", status_code=HTTP_201_CREATED, summary="Create a schedule (409 if the name is taken)",
          dto=schemas.StrictJSON[Schedule], return_dto=None,
          responses=answers(shapes.Schedule, 409, 413, 422, status=201))
    async def create(self, backend: NamedDependency[Backend],
                     data: JSONBody[Schedule]) -> Response[dict[str, Any]]:
        body = await schedules.create(backend, data)
        return Response(body, status_code=HTTP_201_CREATED,
                        headers={"Location": f"{self.path}/{data.name}"})

    @get("/{name:str}", summary="A schedule", responses=answers(shapes.Schedule, 404))
    async def get_schedule(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await schedules.get(backend, name)

    @put("/{name:str}", status_code=HTTP_200_OK, summary="Create or replace a schedule",
         dto=schemas.StrictJSON[ScheduleBody], return_dto=None,
         responses=answers(shapes.Schedule, 409, 413, 422, also={201: shapes.Schedule}))
    async def replace(self, backend: NamedDependency[Backend], name: FromPath[str],
                      data: JSONBody[ScheduleBody]) -> Response[dict[str, Any]]:
        body, created = await schedules.put(backend, data.named(name))
        return Response(body, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @delete("/{name:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a schedule",
            responses=answers(None, 404, 409))
    async def remove(self, backend: NamedDependency[Backend], name: FromPath[str]) -> None:
        await schedules.delete(backend, name)

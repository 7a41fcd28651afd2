"""GET /api/gallery (paged, newest first), GET and DELETE /api/gallery/<id>, and GET
/api/gallery/<id>/thumbnail: the pictures the server has drawn, kept with their parameters
(limner.store.gallery)."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from limner.errors import InvalidRequest
from limner.server.state import State
from limner.store.gallery import Gallery, Picture
from limner.types import GalleryPicture, GalleryResponse

# An id names one picture forever: browsers may keep it.
IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}


def _gallery(request: Request) -> Gallery:
    state: State = request.app.state.limner
    return state.gallery


async def pictures(request: Request) -> Response:
    limit_text = request.query_params.get("limit", "50")
    if not limit_text.isdigit():
        raise InvalidRequest(f"limit must be a whole number, got {limit_text!r}")
    limit = int(limit_text)
    page = _gallery(request).pictures(limit, request.query_params.get("before"))
    listed = [_listed(picture) for picture in page]
    more = len(page) == limit
    return JSONResponse(GalleryResponse(pictures=listed, next=page[-1].id if more else None).wire())


async def picture(request: Request) -> Response:
    path = _gallery(request).file(request.path_params["picture_id"])
    return FileResponse(path, media_type="image/png", headers=IMMUTABLE)


async def thumbnail(request: Request) -> Response:
    picture_id = request.path_params["picture_id"]
    path = await asyncio.to_thread(_gallery(request).thumbnail, picture_id)
    return FileResponse(path, media_type="image/jpeg", headers=IMMUTABLE)


async def delete(request: Request) -> Response:
    _gallery(request).delete(request.path_params["picture_id"])
    return JSONResponse({})


def _listed(picture: Picture) -> GalleryPicture:
    return GalleryPicture(id=picture.id, created_at=picture.created_at,
                          parameters=picture.parameters, bytes=picture.bytes,
                          url=f"/api/gallery/{picture.id}",
                          thumbnail=f"/api/gallery/{picture.id}/thumbnail")  # fmt: skip

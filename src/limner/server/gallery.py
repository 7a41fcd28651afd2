"""GET /api/gallery (paged, newest first), GET and DELETE /api/gallery/<id>: the pictures
the server has drawn, kept with their parameters (limner.store.gallery)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

from limner.errors import InvalidRequest
from limner.server.state import State
from limner.store.gallery import Gallery, Picture
from limner.types import GalleryPicture, GalleryResponse


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
    # An id names one picture forever: browsers may keep it.
    return FileResponse(path, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})  # fmt: skip


async def delete(request: Request) -> Response:
    _gallery(request).delete(request.path_params["picture_id"])
    return JSONResponse({})


def _listed(picture: Picture) -> GalleryPicture:
    return GalleryPicture(id=picture.id, created_at=picture.created_at,
                          parameters=picture.parameters, bytes=picture.bytes,
                          url=f"/api/gallery/{picture.id}")  # fmt: skip

"""The own profile's photos: list, upload, reorder, delete (services/media/photos.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, Upload, operation
from handlers.responses import Photo
from handlers.schemas import PositiveId, Strict
from services.media.content import IMAGE_TYPES

API_TAG = Tag("photos", "The own profile's photos: up to MAX_PROFILE_PHOTOS, ordered; the first is the picture")

# What an image upload may answer besides its result: here and for the profile picture (handlers/users.py).
IMAGE_UPLOAD_NOTES = {
    400: "`empty_file`, `unsupported_media_type`, `invalid_image` (truncated, malformed, not what its first "
    "bytes claim) or `image_too_many_pixels` (declares more than IMAGE_MAX_PIXELS pixels).",
    404: "The account was deleted.",
    413: "`body_too_large` (over MAX_UPLOAD_BYTES) or `storage_quota_exceeded` (the user's photos and "
    "attachments would exceed MEDIA_QUOTA_BYTES).",
    429: "`rate_limited`: UPLOADS_PER_HOUR uploads (photos and attachments) in the last hour.",
}
IMAGE_UPLOAD = Upload(
    tuple(IMAGE_TYPES),
    "The image's raw bytes, at most {max_upload}. The type is read from the bytes, not the header. It is "
    "decoded and encoded again (JPEG, or PNG when it has transparency): metadata such as EXIF and its GPS "
    "position are not kept, the EXIF orientation is applied, the longest side is bounded.",
)
PHOTO_ID = {"photo_id": "The photo's id."}


class PhotoOrder(Strict):
    order: Annotated[list[PositiveId], Field(min_length=1, max_length=100, json_schema_extra={"uniqueItems": True})]
    """Photo ids, each once: these come first, in this order; the others follow in their current order."""

    @field_validator("order")
    @classmethod
    def _each_once(cls, order: list[int]) -> list[int]:
        if len(set(order)) != len(order):
            raise ValueError("names a photo more than once")
        return order


class PhotosHandler(BaseHandler):
    @operation(
        "listPhotos",
        responses={200: Reply("The photos, first (the profile picture) to last.", list[Photo])},
        errors=(503,),
        notes={404: "The account was deleted."},
    )
    async def get(self) -> None:
        """Own profile photos, in order."""
        user_id = self.require_user()
        self.send_json(await self.services.users.photos.current(user_id))

    @operation(
        "addPhoto",
        body=IMAGE_UPLOAD,
        responses={201: Reply("Stored, last in the order (first, so the picture, when it is the only one).", Photo)},
        errors=(503,),
        notes={
            **IMAGE_UPLOAD_NOTES,
            409: "`photo_limit_reached` (the profile holds MAX_PROFILE_PHOTOS photos) or `photos_changed` "
            "(changed meanwhile by other requests: retry).",
        },
    )
    async def post(self) -> None:
        """Add a photo at the end of the profile's photos."""
        user_id = self.require_user()
        data = self.body_bytes(self.services.settings.max_upload_bytes)
        self.send_json(await self.services.users.photos.add(user_id, data), status=201)

    @operation(
        "reorderPhotos",
        body=PhotoOrder,
        responses={200: Reply("The photos in their new order.", list[Photo])},
        errors=(503,),
        notes={
            404: "`photo_not_found`: an id that is not one of the user's photos.",
            409: "`photos_changed`: changed meanwhile by other requests; retry.",
        },
    )
    async def patch(self) -> None:
        """Reorder the photos; the first becomes the profile picture.

        `order` names some or all of the photos: those come first, in that order, and the others keep
        their relative order after them. `{"order": [id]}` makes one photo the profile picture.
        """
        user_id = self.require_user()
        body = self.json_body(PhotoOrder)
        self.send_json(await self.services.users.photos.reorder(user_id, body.order))


class PhotoHandler(BaseHandler):
    @operation(
        "deletePhoto",
        path=PHOTO_ID,
        responses={204: Reply("Deleted, files included; the next photo, if any, is now the profile picture.")},
        errors=(503,),
        notes={
            404: "`photo_not_found`: not one of the user's photos.",
            409: "`photos_changed`: changed meanwhile by other requests; retry.",
        },
    )
    async def delete(self, photo_id: str) -> None:
        """Delete a photo."""
        user_id = self.require_user()
        await self.services.users.photos.delete(user_id, int(photo_id))
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/users/me/photos/", PhotosHandler),
    (r"/api/users/me/photos/([0-9]{1,15})/", PhotoHandler),
]

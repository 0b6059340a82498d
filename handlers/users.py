"""Own profile, profile picture, and other users' public profiles."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.schemas import ProfilePatch


class MeHandler(BaseHandler):
    async def get(self) -> None:
        user_id = self.require_user()
        doc = await self.services.users.get(user_id)
        self.send_json(self.services.users.own_profile(doc))

    async def patch(self) -> None:
        user_id = self.require_user()
        body = self.json_body(ProfilePatch)
        doc = await self.services.users.update(user_id, body.model_dump(exclude_unset=True))
        self.send_json(self.services.users.own_profile(doc))


class PictureHandler(BaseHandler):
    async def put(self) -> None:
        user_id = self.require_user()
        data = self.body_bytes(self.services.settings.max_upload_bytes)
        url = await self.services.users.set_picture(user_id, data)
        self.send_json({"profile_picture": url})


class UserHandler(BaseHandler):
    async def get(self, user_id_text: str) -> None:
        viewer_id = self.require_user()
        user_id = int(user_id_text)
        self.send_json(await self.services.users.public_for(viewer_id, user_id))


routes = [
    (r"/api/users/me/", MeHandler),
    (r"/api/users/me/picture/", PictureHandler),
    (r"/api/users/([0-9]{1,15})/", UserHandler),
]

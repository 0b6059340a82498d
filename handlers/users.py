"""Own profile, profile picture, and other users' public profiles."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from typing import Annotated

import tornado.iostream
from pydantic import Field, StrictStr

from handlers.base import BaseHandler
from handlers.contract import Reply, Tag, operation
from handlers.photos import IMAGE_UPLOAD, IMAGE_UPLOAD_NOTES
from handlers.responses import OwnProfile, ProfilePicture, PublicProfile
from handlers.schemas import ProfilePatch, Strict
from services.accounts.budgets import spend_profile_read
from services.accounts.export import Entry, spend_export
from services.matching.location import location_change_budget

API_TAG = Tag("profiles", "Own profile, picture, other people's public profiles")
ACCOUNT_DELETED = {404: "The account was deleted."}


class AccountDeletionBody(Strict):
    password: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class MeHandler(BaseHandler):
    @operation(
        "getOwnProfile", responses={200: Reply("Own profile.", OwnProfile)}, errors=(503,), notes=ACCOUNT_DELETED
    )
    async def get(self) -> None:
        """Own profile."""
        user_id = self.require_user()
        doc = await self.services.users.get(user_id)
        self.send_json(self.services.users.own_profile(doc))

    @operation(
        "updateOwnProfile",
        body=ProfilePatch,
        responses={200: Reply("The updated profile.", OwnProfile)},
        errors=(503,),
        notes={**ACCOUNT_DELETED, 429: "`rate_limited`: LOCATION_CHANGES_PER_DAY location changes were made."},
    )
    async def patch(self) -> None:
        """Change profile fields."""
        user_id = self.require_user()
        body = self.json_body(ProfilePatch)
        budget = location_change_budget(self.services.rates, self.services.settings, user_id)
        doc = await self.services.users.update(
            user_id, body.model_dump(exclude_unset=True), spend_location_change=budget
        )
        self.send_json(self.services.users.own_profile(doc))

    @operation(
        "deleteOwnAccount",
        body=AccountDeletionBody,
        responses={204: Reply("The account is deleted.")},
        errors=(503,),
        notes={
            400: "`wrong_password`: the password is not the account's.",
            429: "`too_many_attempts`: too many failed sign-ins or password proofs for this username or "
            "from this address (the sign-in throttle).",
        },
    )
    async def delete(self) -> None:
        """Delete the account, for good.

        The password is checked as a sign-in checks it, and throttled with sign-ins. Then every token of the
        account is refused and every socket of it closed with 4002, on every node; every match ends as an
        unmatch ends it (the other person's sockets on it close with 4001 and both get `match_ended`); the
        messages the account sent are erased (each stays as a placeholder, so the other person's history
        keeps its order); photos, attachments, likes, passes, blocks, devices and preferences are removed;
        the username is freed. Reports about the account are kept for moderation until their retention.
        """
        user_id = self.require_user()
        body = self.json_body(AccountDeletionBody)
        # No account has a password over the limit: it is refused as a wrong one, without hashing it.
        password = body.password if len(body.password) <= self.services.settings.max_password_chars else None
        await self.services.deletion.delete(user_id, password, client_ip=self.request.remote_ip)
        self.set_status(204)
        self.finish()


class _ChunkSink(io.RawIOBase):
    """What zipfile writes the archive into: the bytes written since the last `take`, nothing more. Not
    seekable, so zipfile writes each entry's sizes after its data (a data descriptor)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        chunk = b"".join(self._chunks)
        self._chunks.clear()
        return chunk


class ExportHandler(BaseHandler):
    @operation(
        "exportOwnData",
        responses={
            200: Reply(
                "A ZIP archive of the account's data (README.txt inside says what is where).", bytes, "application/zip"
            )
        },
        errors=(503,),
        notes={**ACCOUNT_DELETED, 429: "`rate_limited`: EXPORTS_PER_DAY exports were made (Retry-After says when)."},
    )
    async def get(self) -> None:
        """Download everything the service stores about the account.

        A ZIP archive, streamed as it is built: `account.json` (profile and settings as stored, devices
        without their secrets, likes sent, passes, blocks, matches, reports filed, notification preferences,
        mutes), `messages/<conversation id>.json` for every conversation taken part in, `photos/` with the
        uploaded photos, and README.txt. Reports filed by others about the account are not in it. At most
        EXPORTS_PER_DAY per day.
        """
        user_id = self.require_user()
        await self.services.users.get(user_id)  # a deleted account: 404 before a budget is spent
        await spend_export(self.services.rates, self.services.settings, user_id)
        entries = self.services.exports.entries(user_id)
        sink = _ChunkSink()
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", 'attachment; filename="my-data.zip"')
        self.set_header("Cache-Control", "no-store")
        try:
            await self._stream(entries, sink)
        except tornado.iostream.StreamClosedError:
            return  # the client went away: nothing to answer
        self.finish()

    async def _stream(self, entries: AsyncIterator[Entry], sink: _ChunkSink) -> None:
        # Once the first bytes left, a failure (the store went away) can only cut the archive short: the
        # client sees a truncated ZIP, which no unzip tool takes for a whole one.
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            async for name, chunks in entries:
                with archive.open(name, "w", force_zip64=True) as entry:
                    async for chunk in chunks:
                        # Compressed here in pieces of at most a batch of messages or a file chunk, each a
                        # millisecond or so of the loop, then sent: the archive never sits in memory whole.
                        entry.write(chunk)
                        await self._send(sink)
                await self._send(sink)
        await self._send(sink)

    async def _send(self, sink: _ChunkSink) -> None:
        chunk = sink.take()
        if chunk:
            self.write(chunk)
            await self.flush()


class PictureHandler(BaseHandler):
    @operation(
        "setProfilePicture",
        body=IMAGE_UPLOAD,
        responses={200: Reply("Where the picture is served.", ProfilePicture)},
        errors=(503,),
        notes=IMAGE_UPLOAD_NOTES,
    )
    async def put(self) -> None:
        """Upload the profile picture.

        It becomes the first of the profile's photos, in place of the current first one (whose files are
        removed); the other photos stay. See /api/users/me/photos/ for the others.
        """
        user_id = self.require_user()
        data = self.body_bytes(self.services.settings.max_upload_bytes)
        url = await self.services.users.set_picture(user_id, data)
        self.send_json({"profile_picture": url})


class UserHandler(BaseHandler):
    @operation(
        "getPublicProfile",
        path={"user_id": "The user's id."},
        responses={200: Reply("The public profile.", PublicProfile)},
        errors=(503,),
        notes={
            404: "No such user, a block either way, or someone the reader could not meet: the same answer.",
            429: "`rate_limited`: PROFILE_READS_PER_MINUTE profiles were read.",
        },
    )
    async def get(self, user_id_text: str) -> None:
        """Someone's public profile.

        Readable by the people who could meet its owner: discover candidates (each suits the other's
        preferences), a like either way, a match current or former. Every read counts against the
        reader's budget, whatever it answers (reading one's own does not).
        """
        viewer_id = self.require_user()
        user_id = int(user_id_text)
        if user_id != viewer_id:
            await spend_profile_read(self.services.rates, self.services.settings, viewer_id)
        self.send_json(await self.services.users.public_for(viewer_id, user_id))


routes = [
    (r"/api/users/me/", MeHandler),
    (r"/api/users/me/export/", ExportHandler),
    (r"/api/users/me/picture/", PictureHandler),
    (r"/api/users/([0-9]{1,15})/", UserHandler),
]

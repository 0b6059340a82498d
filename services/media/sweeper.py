"""Removal of attachments that were uploaded and never sent in a message (`UNSENT_ATTACHMENT_TTL`).

An attachment is stored with `sent: false`; sending it in a message sets `sent: true` in the same atomic
update that finds it (ChatService._attachment_for). Every node sweeps on its own, every
`MEDIA_SWEEP_INTERVAL` (with jitter, so nodes do not sweep in step): it lists unsent attachments older
than the TTL and removes each with a conditional delete (`sent: false` still), so of several nodes, and of
a sweep racing a send, exactly one wins: the node whose delete removed the document removes the files and
the quota count; a send that comes second finds no attachment (404 `attachment_not_found`). Attachments
stored before the `sent` field existed have none and are never swept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

import pymongo.errors
from pymongo.asynchronous.collection import AsyncCollection

from services.core.background import BackgroundTask
from services.storage.store import Doc

log = logging.getLogger("chat.media")

BATCH = 200


class AttachmentSweeper:
    def __init__(
        self,
        attachments: AsyncCollection[Doc],
        forget: Callable[[int, Doc], Awaitable[None]],
        *,
        ttl_s: float,
        interval_s: float,
    ) -> None:
        self._attachments = attachments
        self._forget = forget  # removes a document's files and releases its quota count
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self._background = BackgroundTask(self._run, "attachment-sweeper")

    def start(self) -> None:
        self._background.start()

    async def close(self) -> None:
        await self._background.close()

    async def sweep(self, now: dt.datetime | None = None) -> int:
        """Remove every unsent attachment older than the TTL; how many this node removed."""
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=self.ttl_s)
        removed = 0
        while True:
            batch = await self._attachments.find(
                {"sent": False, "created_at": {"$lt": cutoff}}, {"uploader_id": 1}, limit=BATCH
            ).to_list(None)
            gone = 0
            for candidate in batch:
                doc = await self._attachments.find_one_and_delete({"_id": candidate["_id"], "sent": False})
                if doc is not None:  # this node won the delete: the files are its to remove
                    await self._forget(int(doc["uploader_id"]), doc)
                    gone += 1
            removed += gone
            # Another node took part of this batch: whatever it left, the next pass finds.
            if len(batch) < BATCH or gone == 0:
                return removed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(0.5, 1.5))
            try:
                removed = await self.sweep()
            except (pymongo.errors.PyMongoError, OSError) as exc:
                log.warning("sweep of unsent attachments failed, next one later: %s", exc)
                continue
            except Exception:
                # A bug must not end the sweeping for the node's lifetime: logged, and tried again later.
                log.exception("sweep of unsent attachments failed")
                continue
            if removed:
                log.info("removed %d unsent attachments", removed)

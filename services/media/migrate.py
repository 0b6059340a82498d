"""Copying uploaded files kept on a node's disk (`DATA_DIR/media`, where they were stored before they moved
to the database) into the GridFS bucket: `python server.py migrate-media --data-dir DATA_DIR`.

Each file under the folder becomes the GridFS file whose `_id` is its path relative to the folder (the path
its URL and its photo or attachment document already name), so nothing else changes. The owner is read
from the document that names the file (a user's photos or picture, an attachment); the type from the
bytes, else from the extension the type was stored under. Safe to run again, on each node in turn, and
while nodes serve: a path the bucket holds is left as it is (`present`); chunks left by a copy that was
interrupted are removed before the file is copied again. Files whose name no upload could have had (a
`.part` of an interrupted write, anything copied there by hand) are counted as `skipped` and left alone.
The files on disk are not removed: delete `DATA_DIR/media` once every node's folder has been copied.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from services.media.blobs import STORED_PATH, MediaFiles
from services.media.content import sniff_content_type, type_of_path
from services.media.photos import photos_in
from services.media.store import paths_of
from services.storage.store import Store


@dataclass
class MigrationReport:
    copied: int = 0
    present: int = 0
    skipped: list[str] = field(default_factory=list)
    bytes_copied: int = 0

    def summary(self) -> str:
        return (
            f"copied {self.copied} files ({self.bytes_copied} bytes), {self.present} already in the database, "
            f"{len(self.skipped)} skipped"
        )


async def owners(store: Store) -> dict[str, int]:
    """The uploader of every path a document names: photos (with thumbnails) and attachments."""
    found: dict[str, int] = {}
    async for user in store.users.find({}, {"photos": 1, "picture": 1}):
        for entry in photos_in(user):
            for path in paths_of(entry):
                found[path] = int(user["_id"])
    async for attachment in store.attachments.find({}, {"uploader_id": 1, "path": 1, "thumbnails": 1}):
        for path in paths_of(attachment):
            found[path] = int(attachment["uploader_id"])
    return found


def _files_under(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def migrate_media(store: Store, root: Path) -> MigrationReport:
    """Copy every file under `root` that the bucket lacks; what was done."""
    files = MediaFiles(store)
    report = MigrationReport()
    paths = await asyncio.to_thread(_files_under, root)
    by_path = await owners(store) if paths else {}
    for path in paths:
        declared = type_of_path(path)
        if not STORED_PATH.match(path) or declared is None:
            report.skipped.append(path)
            continue
        if await files.exists(path):
            report.present += 1
            continue
        data = await asyncio.to_thread((root / path).read_bytes)
        await files.delete(path)  # chunks of a copy that was interrupted
        try:
            await files.put(path, data, sniff_content_type(data) or declared, by_path.get(path))
        except DuplicateKeyError:
            report.present += 1  # copied meanwhile by another run
            continue
        report.copied += 1
        report.bytes_copied += len(data)
    return report


# A node that finds files under DATA_DIR/media at start copies them itself (services/core/container.py),
# so that an upgrade loses no picture when nobody ran the command; this mark, written beside the folder
# once a copy finished, spares the next starts the walk (uploads no longer write to the folder).
COPIED_MARK = "media.copied"


def left_on_disk(data_dir: Path) -> bool:
    """Whether DATA_DIR/media holds files that no finished copy has taken yet."""
    root = data_dir / "media"
    if (data_dir / COPIED_MARK).exists() or not root.is_dir():
        return False
    return any(p.is_file() for p in root.rglob("*"))


async def copy_left_on_disk(store: Store, data_dir: Path) -> MigrationReport:
    """`migrate_media` of DATA_DIR/media, then the mark that says it is done."""
    report = await migrate_media(store, data_dir / "media")
    await asyncio.to_thread((data_dir / COPIED_MARK).write_text, report.summary() + "\n")
    return report

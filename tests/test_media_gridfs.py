"""Media kept in MongoDB (GridFS): every node serves what any node stored, streamed with ranges and
validators, removed with what names it; the files a node kept on its disk move in with
`server.py migrate-media`."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import tornado.simple_httpclient
from gridfs.errors import CorruptGridFile

from services.media.blobs import CHUNK_BYTES
from services.media.migrate import COPIED_MARK, left_on_disk, migrate_media
from tests.processes import ServerProcess, node_env
from tests.support import PASSWORD, TEST_SECRET, ApiClient, assert_error, make_conversation, seed_user, stored_media
from tests.test_photos import png_bytes, upload_attachment, upload_photo

ROOT = Path(__file__).resolve().parent.parent
# A PDF of three GridFS chunks, every byte telling its offset apart from its neighbours'.
PDF = b"%PDF-1.4\n" + bytes(i * 7 % 251 for i in range(2 * CHUNK_BYTES + 1000))


async def fetch(api: ApiClient, url: str, method: str = "GET", **headers: str) -> Any:
    return await api.client.fetch(urlsplit(url).path, method=method, headers=headers, raise_error=False)


async def pdf_attachment(api: ApiClient, services: Any) -> tuple[Any, str]:
    a, b = await seed_user(services, "pdf"), await seed_user(services, "pdf")
    cid = await make_conversation(services, a.id, b.id)
    r = await upload_attachment(api, cid, a, PDF, "application/pdf")
    assert r.status == 201, r.body
    return a, r.body["url"]


async def test_a_file_uploaded_through_one_node_is_served_by_another(cluster_factory):
    n1, n2 = await cluster_factory(2)
    a = await n1.api.user("alice")
    b = await n1.api.user("bob")
    cid = await make_conversation(n1.services, a.id, b.id)
    photo = await upload_photo(n1.api, a, png_bytes())
    assert photo.status == 201, photo.body
    attachment = await upload_attachment(n1.api, cid, a, PDF, "application/pdf")
    assert attachment.status == 201, attachment.body
    for url in (photo.body["url"], *photo.body["thumbnails"].values()):
        served = await fetch(n2.api, url)
        # An opaque PNG is stored as a JPEG (services/media/images.py).
        assert served.code == 200 and served.headers["Content-Type"] == "image/jpeg", (url, served.code)
    assert (await fetch(n2.api, attachment.body["url"])).body == PDF
    # Nothing of it is on either node's disk.
    for node in (n1, n2):
        media_dir = Path(node.services.settings.data_dir) / "media"
        assert not media_dir.exists() or not any(p.is_file() for p in media_dir.rglob("*"))
    # Deleted through node 2: gone for node 1 too.
    assert (await n2.api.delete(f"/api/users/me/photos/{photo.body['id']}/", token=a.access)).status == 204
    assert (await fetch(n1.api, photo.body["url"])).code == 404


async def test_a_stored_file_names_its_owner_type_and_digest(api, services):
    owner, url = await pdf_attachment(api, services)
    path = urlsplit(url).path.removeprefix("/media/")
    doc = await services.store.media_files.find_one({"_id": path})
    assert doc["filename"] == path and doc["length"] == len(PDF) and doc["chunkSize"] == CHUNK_BYTES
    assert doc["metadata"] == {
        "owner": owner.id,
        "content_type": "application/pdf",
        "sha256": hashlib.sha256(PDF).hexdigest(),
    }
    chunks = await services.store.media_chunks.find({"files_id": path}).sort("n", 1).to_list(None)
    assert [c["n"] for c in chunks] == [0, 1, 2] and b"".join(c["data"] for c in chunks) == PDF


async def test_the_whole_file_carries_validators_and_caching_headers(api, services):
    _, url = await pdf_attachment(api, services)
    r = await fetch(api, url)
    assert r.code == 200 and r.body == PDF
    h = r.headers
    assert h["Content-Type"] == "application/pdf" and int(h["Content-Length"]) == len(PDF)
    assert h["Accept-Ranges"] == "bytes"
    assert h["ETag"] == f'"{hashlib.sha256(PDF).hexdigest()}"'
    assert h["Cache-Control"] == "public, max-age=86400, immutable"
    assert h["X-Content-Type-Options"] == "nosniff" and "sandbox" in h["Content-Security-Policy"]
    uploaded = email.utils.parsedate_to_datetime(h["Last-Modified"])
    assert abs((dt.datetime.now(dt.UTC) - uploaded).total_seconds()) < 60

    for validators in (
        {"If-None-Match": h["ETag"]},
        {"If-None-Match": f'"other", W/{h["ETag"]}'},
        {"If-None-Match": "*"},
    ):
        cached = await fetch(api, url, **validators)
        assert cached.code == 304 and not cached.body, validators
        assert cached.headers["ETag"] == h["ETag"]
    assert (await fetch(api, url, **{"If-None-Match": '"stale"'})).code == 200
    assert (await fetch(api, url, **{"If-Modified-Since": h["Last-Modified"]})).code == 304
    earlier = email.utils.format_datetime(uploaded - dt.timedelta(hours=1), usegmt=True)
    assert (await fetch(api, url, **{"If-Modified-Since": earlier})).code == 200

    head = await fetch(api, url, method="HEAD")
    assert head.code == 200 and not head.body and int(head.headers["Content-Length"]) == len(PDF)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        # Across the boundary of the first two chunks, then of the last two.
        (f"bytes={CHUNK_BYTES - 10}-{CHUNK_BYTES + 9}", CHUNK_BYTES - 10, CHUNK_BYTES + 10),
        (f"bytes={2 * CHUNK_BYTES - 1}-", 2 * CHUNK_BYTES - 1, len(PDF)),
        ("bytes=-100", len(PDF) - 100, len(PDF)),
        (f"bytes=-{10 * len(PDF)}", 0, len(PDF)),  # a suffix longer than the file: all of it
        (f"bytes=100-{10 * len(PDF)}", 100, len(PDF)),  # an end past the file's: to its end
        (f"bytes={len(PDF) - 1}-{len(PDF) - 1}", len(PDF) - 1, len(PDF)),
    ],
)
async def test_a_range_is_206_with_its_bytes(api, services, header, start, end):
    _, url = await pdf_attachment(api, services)
    r = await fetch(api, url, Range=header)
    assert r.code == 206, (header, r.code)
    assert r.body == PDF[start:end]
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(PDF)}"
    assert int(r.headers["Content-Length"]) == end - start
    assert r.headers["ETag"] == f'"{hashlib.sha256(PDF).hexdigest()}"'


async def test_unsatisfiable_ignored_and_conditional_ranges(api, services):
    _, url = await pdf_attachment(api, services)
    for header in (f"bytes={len(PDF)}-", f"bytes={len(PDF) + 5}-{len(PDF) + 9}", "bytes=-0"):
        r = await fetch(api, url, Range=header)
        assert r.code == 416, header
        assert r.headers["Content-Range"] == f"bytes */{len(PDF)}"
        assert orjson.loads(r.body)["error"]["code"] == "range_not_satisfiable"
        assert r.headers["Cache-Control"] == "no-store"
    # Several ranges, or a header this server does not read: the whole file.
    for header in ("bytes=0-1,5-6", "bytes=5-2", "items=0-5", "bytes=abc", "bytes=-"):
        r = await fetch(api, url, Range=header)
        assert r.code == 200 and r.body == PDF, header
    etag = (await fetch(api, url, method="HEAD")).headers["ETag"]
    assert (await fetch(api, url, Range="bytes=0-9", **{"If-Range": etag})).code == 206
    stale = await fetch(api, url, Range="bytes=0-9", **{"If-Range": '"another-version"'})
    assert stale.code == 200 and stale.body == PDF


@pytest.mark.parametrize(
    "path",
    ["/media/attachments/none.pdf", "/media/attachments", "/media/../etc/passwd", "/media/a/b/c.jpg", "/media/%00"],
)
async def test_a_path_that_names_no_file_is_404(api, path):
    r = await api.get(path)
    assert_error(r, 404, "not_found")


async def test_a_file_missing_a_chunk_is_cut_short_never_padded(api, services):
    # As when a file is deleted while it is read: the chunks stop before the length says.
    _, url = await pdf_attachment(api, services)
    path = urlsplit(url).path.removeprefix("/media/")
    await services.store.media_chunks.delete_one({"files_id": path, "n": 1})
    with pytest.raises(CorruptGridFile, match="chunk 1"):
        async for _ in services.media.files.read(await services.media.files.find(path)):
            pass
    # The headers promised the whole length: the client sees the connection end before it.
    with pytest.raises(tornado.simple_httpclient.HTTPStreamClosedError):
        await fetch(api, url)
    assert (await fetch(api, url, Range="bytes=0-99")).body == PDF[:100]  # the chunks there are whole


async def test_deleting_an_account_removes_every_file_it_uploaded(api, services):
    owner, other = await api.user("leaving"), await api.user("staying")
    cid = await make_conversation(services, owner.id, other.id)
    assert (await upload_attachment(api, cid, owner, PDF, "application/pdf")).status == 201
    assert (await upload_photo(api, owner, png_bytes())).status == 201
    kept = await upload_photo(api, other, png_bytes())
    assert len(await stored_media(services)) == 7  # the PDF, two photos and their two thumbnails each
    gone = await api.delete("/api/users/me/", json={"password": PASSWORD}, token=owner.access)
    assert gone.status in (200, 202, 204), gone.body
    for _ in range(50):  # the removal may finish after the answer
        if len(await stored_media(services)) == 3:
            break
        await asyncio.sleep(0.1)
    assert await stored_media(services) == {
        urlsplit(url).path.removeprefix("/media/") for url in (kept.body["url"], *kept.body["thumbnails"].values())
    }


# -- migration of files kept on disk ----------------------------------------------------------------------


def disk_media(data_dir: Path) -> dict[str, bytes]:
    """Files as a node stored them before they moved to the database."""
    files = {
        "profile_pictures/OldPicture1.png": png_bytes(),
        "profile_pictures/OldPicture1.128.png": png_bytes((16, 12)),
        "attachments/OldAttachment.pdf": PDF,
        "attachments/OldNote.txt": b"plain words",
    }
    for path, data in {**files, "attachments/Half.jpg.part": b"\xff\xd8\xff", "notes.md": b"#"}.items():
        target = data_dir / "media" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


async def test_migration_copies_what_is_on_disk_once(api, services, tmp_path):
    files = disk_media(tmp_path)
    user = await seed_user(services, "old", picture="profile_pictures/OldPicture1.png")
    interrupted = "attachments/OldAttachment.pdf"
    # A copy interrupted after its first chunk: no file document, one chunk.
    await services.store.media_chunks.insert_one({"files_id": interrupted, "n": 0, "data": PDF[:CHUNK_BYTES]})

    report = await migrate_media(services.store, tmp_path / "media")
    assert (report.copied, report.present, report.bytes_copied) == (4, 0, sum(map(len, files.values())))
    assert sorted(report.skipped) == ["attachments/Half.jpg.part", "notes.md"]
    assert await stored_media(services) == set(files)
    for path, data in files.items():
        served = await api.client.fetch(f"/media/{path}", raise_error=False)
        assert served.code == 200 and served.body == data, path
    note = await api.client.fetch("/media/attachments/OldNote.txt")
    assert note.headers["Content-Type"] == "text/plain; charset=utf-8"
    picture = await services.store.media_files.find_one({"_id": "profile_pictures/OldPicture1.png"})
    assert picture["metadata"]["owner"] == user.id and picture["metadata"]["content_type"] == "image/png"

    again = await migrate_media(services.store, tmp_path / "media")
    assert (again.copied, again.present, len(again.skipped)) == (0, 4, 2)
    assert await services.store.media_chunks.count_documents({"files_id": interrupted}) == 3


async def test_migration_of_a_missing_folder_copies_nothing(services, tmp_path):
    report = await migrate_media(services.store, tmp_path / "nothing-here")
    assert (report.copied, report.present, report.skipped) == (0, 0, [])


@pytest.mark.slow
async def test_the_migrate_media_command_reports_its_counts(services, mongo_url, tmp_path):
    files = disk_media(tmp_path)
    env = {
        **os.environ,
        "MONGODB_URL": mongo_url,
        "MONGODB_DATABASE": services.settings.mongodb_database,
        "JWT_SECRET": TEST_SECRET,
        "LOG_FORMAT": "text",
    }
    command = [sys.executable, str(ROOT / "server.py"), "migrate-media", "--data-dir", str(tmp_path)]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert f"copied {len(files)} files" in first.stdout and "0 already in the database, 2 skipped" in first.stdout
    assert "skipped notes.md" in first.stderr
    second = await asyncio.to_thread(run)
    assert second.returncode == 0 and f"copied 0 files (0 bytes), {len(files)} already" in second.stdout
    assert await stored_media(services) == set(files)


@pytest.mark.slow
async def test_a_node_copies_the_files_left_on_its_disk_by_itself(mongo_url, tmp_path):
    """An upgraded node nobody ran the command on: what its disk holds is served all the same, once the
    node has copied it (in the background, at start), and the next start does not walk the folder again."""
    files = disk_media(tmp_path)
    assert left_on_disk(tmp_path)
    node = ServerProcess(tmp_path, node_env(mongo_url)).start()
    client = tornado.simple_httpclient.SimpleAsyncHTTPClient()
    try:
        for path, data in files.items():
            for _ in range(200):
                served = await client.fetch(f"{node.base}/media/{path}", raise_error=False)
                if served.code != 404:
                    break
                await asyncio.sleep(0.1)
            assert served.code == 200 and served.body == data, (path, served.code)
        for _ in range(50):  # the mark is written once the last file is in
            if not left_on_disk(tmp_path):
                break
            await asyncio.sleep(0.1)
        assert (tmp_path / COPIED_MARK).read_text().startswith(f"copied {len(files)} files")
        assert not left_on_disk(tmp_path)
        assert "copied into the database" in node.log()
    finally:
        client.close()
        node.stop()

"""Profile photos and the image pipeline against a real server: metadata stripped from what is served,
orientation, size bounds, thumbnails, refused images, the photo list and its order, quotas, the upload
rate, the sweep of unsent attachments and the removal of all of a user's files."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import struct
import threading
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageCms

from services.media.cleanup import remove_user_files
from tests.support import (
    ApiClient,
    Response,
    TestUser,
    assert_error,
    conforms,
    make_conversation,
    seed_user,
    stored_media,
)
from tests.ws_helpers import join, messages, send_rest

PHOTOS = "/api/users/me/photos/"
PICTURE = "/api/users/me/picture/"
ME = "/api/users/me/"
SECRET_WORDS = (b"SecretCam", b"secret comment", b"GPSInfo-marker")


# -- images made for the tests ---------------------------------------------------------------------------


def jpeg_with_gps(
    size: tuple[int, int] = (300, 200), *, orientation: int | None = None, color: tuple[int, int, int] = (200, 20, 20)
) -> bytes:
    """A JPEG as a phone writes it: EXIF with a GPS position and a camera name, a comment, an ICC profile.
    Its top-left corner has a blue square, to see where orientation put it."""
    image = Image.new("RGB", size, color)
    image.paste((0, 0, 255), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    if orientation is not None:
        exif[0x0112] = orientation
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), comment=b"secret comment", icc_profile=profile, quality=95)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the GPS position is really in there
    return data


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (10, 120, 200)) -> bytes:
    mode = "RGBA" if len(color) == 4 else "RGB"
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height RGB pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_no_metadata(data: bytes) -> None:
    image = decoded(data)
    assert not image.getexif(), dict(image.getexif())
    assert not {"exif", "icc_profile", "xmp", "comment", "XML:com.adobe.xmp"} & set(image.info), image.info
    for word in SECRET_WORDS:
        assert word not in data
    assert b"Exif\x00\x00" not in data


def near(pixel: Any, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], expected, strict=True))


async def fetch_media(api: ApiClient, url: str) -> Any:
    return await api.client.fetch(urlsplit(url).path, method="GET", raise_error=False)


async def upload_photo(api: ApiClient, user: TestUser, data: bytes) -> Response:
    return await api.post(PHOTOS, body=data, token=user.access, headers={"Content-Type": "image/jpeg"})


async def upload_attachment(
    api: ApiClient, cid: int, user: TestUser, data: bytes, kind: str = "image/jpeg"
) -> Response:
    return await api.post(
        f"/api/conversations/{cid}/attachments/", body=data, token=user.access, headers={"Content-Type": kind}
    )


async def used_bytes(services: Any, user_id: int) -> int:
    return int(await services.media.quota.used(user_id))


# -- the pipeline ------------------------------------------------------------------------------------------


async def test_a_photo_is_served_without_exif_gps_or_profile_with_its_thumbnails(api, services):
    user = await seed_user(services, "gps")
    document = (await api.get("/api/openapi.json")).body
    r = await upload_photo(api, user, jpeg_with_gps())
    assert r.status == 201, r.body
    conforms(document, "post", PHOTOS, r)
    photo = r.body
    assert (photo["width"], photo["height"], photo["content_type"]) == (300, 200, "image/jpeg")
    served = await fetch_media(api, photo["url"])
    assert served.code == 200 and served.headers["Content-Type"] == "image/jpeg"
    assert_no_metadata(served.body)
    assert decoded(served.body).size == (300, 200)
    # Thumbnails beside the image, at predictable names, no larger than their side, just as clean.
    assert set(photo["thumbnails"]) == {"128", "512"}
    for side, url in photo["thumbnails"].items():
        assert url == photo["url"].removesuffix(".jpg") + f".{side}.jpg"
        thumbnail = await fetch_media(api, url)
        assert thumbnail.code == 200
        assert max(decoded(thumbnail.body).size) == min(int(side), 300)
        assert_no_metadata(thumbnail.body)
    # The first photo is the profile picture everywhere.
    assert (await api.get(ME, token=user.access)).body["profile_picture"] == photo["url"]
    listed = await api.get(PHOTOS, token=user.access)
    conforms(document, "get", PHOTOS, listed)
    assert listed.body == [photo]


async def test_an_image_attachment_is_served_without_exif_or_gps(api, services):
    a, b = await seed_user(services, "att"), await seed_user(services, "att")
    cid = await make_conversation(services, a.id, b.id)
    r = await upload_attachment(api, cid, a, jpeg_with_gps())
    assert r.status == 201, r.body
    assert r.body["content_type"] == "image/jpeg"
    served = await fetch_media(api, r.body["url"])
    assert served.code == 200 and len(served.body) == r.body["size"]
    assert_no_metadata(served.body)
    assert (await fetch_media(api, r.body["url"].removesuffix(".jpg") + ".128.jpg")).code == 200


async def test_pdf_and_text_attachments_are_stored_as_they_came(api, services):
    a, b = await seed_user(services, "doc"), await seed_user(services, "doc")
    cid = await make_conversation(services, a.id, b.id)
    for data, kind in ((b"%PDF-1.4\n% a small pdf\n", "application/pdf"), (b"bonjour\n", "text/plain")):
        r = await upload_attachment(api, cid, a, data, kind)
        assert r.status == 201 and r.body["content_type"] == kind, r.body
        assert (await fetch_media(api, r.body["url"])).body == data


async def test_orientation_is_applied_before_exif_is_dropped(api, services):
    user = await seed_user(services, "rot")
    # Orientation 6: the camera was turned; viewers rotate the stored pixels 90 degrees clockwise.
    r = await upload_photo(api, user, jpeg_with_gps((300, 200), orientation=6))
    assert r.status == 201, r.body
    assert (r.body["width"], r.body["height"]) == (200, 300)
    image = decoded((await fetch_media(api, r.body["url"])).body).convert("RGB")
    assert image.size == (200, 300)
    # The blue top-left corner is now the top-right corner.
    assert near(image.getpixel((190, 10)), (0, 0, 255)) and near(image.getpixel((10, 10)), (200, 20, 20))
    assert not decoded((await fetch_media(api, r.body["url"])).body).getexif()


async def test_a_large_image_is_scaled_down_and_transparency_stays_png(api, services):
    user = await seed_user(services, "big")
    big = await upload_photo(api, user, png_bytes((3000, 1000)))
    assert big.status == 201, big.body
    assert (big.body["width"], big.body["height"]) == (2048, 683)
    assert decoded((await fetch_media(api, big.body["url"])).body).size == (2048, 683)
    clear = await upload_photo(api, user, png_bytes((40, 40), (1, 2, 3, 100)))
    assert clear.status == 201 and clear.body["content_type"] == "image/png", clear.body
    assert (
        clear.body["url"].endswith(".png") and decoded((await fetch_media(api, clear.body["url"])).body).mode == "RGBA"
    )


async def test_an_animated_gif_attachment_keeps_its_first_frame(api, services):
    a, b = await seed_user(services, "gif"), await seed_user(services, "gif")
    cid = await make_conversation(services, a.id, b.id)
    frames = [Image.new("RGB", (30, 30), color) for color in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r = await upload_attachment(api, cid, a, out.getvalue(), "image/gif")
    assert r.status == 201 and r.body["content_type"] == "image/jpeg", r.body
    assert near(decoded((await fetch_media(api, r.body["url"])).body).getpixel((15, 15)), (250, 0, 0))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (png_declaring(20000, 20000), "image_too_many_pixels"),
        (b"\xff\xd8\xff\xe0" + b"not a jpeg at all " * 40, "invalid_image"),
        (jpeg_with_gps()[:400], "invalid_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "invalid_image"),
        (b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x01" * 40, "invalid_image"),
    ],
    ids=["bomb-20000x20000", "garbage-after-jpeg-magic", "truncated-jpeg", "garbage-after-png-magic", "bad-webp"],
)
async def test_bombs_and_malformed_images_are_400_and_store_nothing(api, services, data, code):
    user, other = await seed_user(services, "bad"), await seed_user(services, "bad")
    cid = await make_conversation(services, user.id, other.id)
    for r in (
        await upload_photo(api, user, data),
        await api.put(PICTURE, body=data, token=user.access),
        await upload_attachment(api, cid, user, data),
    ):
        assert_error(r, 400, code)
    assert (await api.get(PHOTOS, token=user.access)).body == []
    assert await stored_media(services) == set()
    assert await used_bytes(services, user.id) == 0


# -- the photo list ----------------------------------------------------------------------------------------


async def test_at_most_six_photos_and_the_seventh_is_refused(api, services):
    user = await seed_user(services, "six")
    ids = []
    for shade in range(6):
        r = await upload_photo(api, user, png_bytes(color=(shade * 40, 10, 10)))
        assert r.status == 201, r.body
        ids.append(r.body["id"])
    assert_error(await upload_photo(api, user, png_bytes()), 409, "photo_limit_reached")
    listed = (await api.get(PHOTOS, token=user.access)).body
    assert [p["id"] for p in listed] == ids
    # What is refused leaves nothing behind: six photos, three files each.
    assert len(await stored_media(services, "profile_pictures/")) == 18


async def test_reorder_changes_the_picture_in_rest_public_profiles_and_frames(api, services):
    a, b = await seed_user(services, "ord"), await seed_user(services, "ord")
    cid = await make_conversation(services, a.id, b.id)
    photos = [(await upload_photo(api, a, png_bytes(color=(i * 60, 0, 0)))).body for i in range(3)]
    first, second, third = (p["id"] for p in photos)
    document = (await api.get("/api/openapi.json")).body

    moved = await api.patch(PHOTOS, {"order": [third]}, token=a.access)
    assert moved.status == 200, moved.body
    conforms(document, "patch", PHOTOS, moved)
    assert [p["id"] for p in moved.body] == [third, first, second]
    url = photos[2]["url"]
    assert (await api.get(ME, token=a.access)).body["profile_picture"] == url
    public = (await api.get(f"/api/users/{a.id}/", token=b.access)).body
    assert public["profile_picture"] == url
    assert public["photos"] == [photos[2]["url"], photos[0]["url"], photos[1]["url"]]

    # The next message's frame and answer carry the new picture.
    ws = await join(api, cid, b)
    sent = await send_rest(api, cid, a, "new look")
    assert sent.status == 201 and sent.body["sender_profile_picture"] == url
    assert (await messages(ws, 1))[0]["sender_profile_picture"] == url
    ws.close()

    full = await api.patch(PHOTOS, {"order": [second, first, third]}, token=a.access)
    assert [p["id"] for p in full.body] == [second, first, third]
    assert (await api.get(ME, token=a.access)).body["profile_picture"] == photos[1]["url"]


async def test_deleting_photos_removes_their_files_and_moves_the_picture(api, services):
    user = await seed_user(services, "del")
    photos = [(await upload_photo(api, user, png_bytes(color=(0, i * 60, 0)))).body for i in range(2)]
    gone = await api.delete(f"{PHOTOS}{photos[0]['id']}/", token=user.access)
    assert gone.status == 204 and not gone.body
    for url in (photos[0]["url"], *photos[0]["thumbnails"].values()):
        assert (await fetch_media(api, url)).code == 404
    assert (await api.get(ME, token=user.access)).body["profile_picture"] == photos[1]["url"]
    assert_error(await api.delete(f"{PHOTOS}{photos[0]['id']}/", token=user.access), 404, "photo_not_found")
    assert (await api.delete(f"{PHOTOS}{photos[1]['id']}/", token=user.access)).status == 204
    assert (await api.get(ME, token=user.access)).body["profile_picture"] is None
    assert await stored_media(services, "profile_pictures/") == set()
    assert await used_bytes(services, user.id) == 0


async def test_put_picture_replaces_the_first_photo_and_keeps_the_others(api, services):
    user = await seed_user(services, "put")
    photos = [(await upload_photo(api, user, png_bytes(color=(0, 0, i * 60)))).body for i in range(2)]
    r = await api.put(PICTURE, body=jpeg_with_gps(), token=user.access)
    assert r.status == 200 and set(r.body) == {"profile_picture"}, r.body
    listed = (await api.get(PHOTOS, token=user.access)).body
    assert [p["url"] for p in listed] == [r.body["profile_picture"], photos[1]["url"]]
    assert (await fetch_media(api, photos[0]["url"])).code == 404
    assert_no_metadata((await fetch_media(api, r.body["profile_picture"])).body)


async def test_a_picture_from_before_photo_lists_becomes_the_first_photo(api, services):
    await services.media.files.put("profile_pictures/old.png", png_bytes(), "image/png", None)
    user = await seed_user(services, "legacy", picture="profile_pictures/old.png")
    viewer = await seed_user(services, "legacy")
    assert (await api.get(f"/api/users/{user.id}/", token=viewer.access)).body["photos"] == [
        services.media.url("profile_pictures/old.png")
    ]
    [legacy] = (await api.get(PHOTOS, token=user.access)).body
    assert legacy["url"].endswith("/profile_pictures/old.png") and legacy["content_type"] == "image/png"
    assert set(legacy["thumbnails"].values()) == {legacy["url"]}  # no thumbnails were made for it
    added = (await upload_photo(api, user, png_bytes())).body
    assert [p["id"] for p in (await api.get(PHOTOS, token=user.access)).body] == [legacy["id"], added["id"]]


# -- who may change what, and bad input ----------------------------------------------------------------------


async def test_nobody_changes_someone_elses_photos(api, services):
    alice, mallory = await seed_user(services, "owner"), await seed_user(services, "mallory")
    mine = (await upload_photo(api, alice, png_bytes())).body
    unknown = 987_654_321
    for method, kw in (("DELETE", {}), ("PATCH", {"json": {"order": [mine["id"]]}})):
        path = f"{PHOTOS}{mine['id']}/" if method == "DELETE" else PHOTOS
        theirs = await api.request(method, path, token=mallory.access, **kw)
        assert_error(theirs, 404, "photo_not_found")
        # Byte for byte the answer for a photo that does not exist: no existence oracle.
        missing_kw = {"json": {"order": [unknown]}} if method == "PATCH" else {}
        missing_path = f"{PHOTOS}{unknown}/" if method == "DELETE" else PHOTOS
        missing = await api.request(method, missing_path, token=mallory.access, **missing_kw)
        assert (missing.status, missing.body) == (theirs.status, theirs.body)
    assert (await api.get(PHOTOS, token=alice.access)).body == [mine]
    assert (await fetch_media(api, mine["url"])).code == 200
    for method, path in (("GET", PHOTOS), ("POST", PHOTOS), ("PATCH", PHOTOS), ("DELETE", f"{PHOTOS}{mine['id']}/")):
        body = b"{}" if method in ("POST", "PATCH") else None
        assert_error(await api.request(method, path, body=body), 401)
        assert_error(await api.request(method, path, body=body, token=alice.refresh), 401)
    assert (await api.get(PHOTOS, token=alice.access)).body == [mine]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"order": []}',
        b'{"order": [1, 1]}',
        b'{"order": ["1"]}',
        b'{"order": [true]}',
        b'{"order": [0]}',
        b'{"order": [1.5]}',
        b'{"order": [9007199254740993]}',
        b'{"order": 1}',
        b'{"order": [1], "extra": true}',
        b'{"order": [' + b"1," * 100 + b"1]}",
    ],
)
async def test_malformed_reorder_bodies_are_400(api, services, body):
    user = await seed_user(services, "badorder")
    photo = (await upload_photo(api, user, png_bytes())).body
    r = await api.patch(PHOTOS, body=body, token=user.access, headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    assert (await api.get(PHOTOS, token=user.access)).body == [photo]


async def test_wrong_ids_and_oversized_bodies(api, services):
    user = await seed_user(services, "ids")
    for path in (f"{PHOTOS}abc/", f"{PHOTOS}-1/", f"{PHOTOS}1234567890123456/", f"{PHOTOS}1/extra/"):
        assert_error(await api.delete(path, token=user.access), 404)
    assert_error(await api.delete(f"{PHOTOS}0/", token=user.access), 404, "photo_not_found")
    limit = services.settings.max_upload_bytes
    assert_error(await upload_photo(api, user, png_bytes() + b"\x00" * limit), 413)
    huge_order = b'{"order": [' + b" " * services.settings.max_body_bytes + b"1]}"
    assert_error(await api.patch(PHOTOS, body=huge_order, token=user.access), 413, "body_too_large")
    assert_error(await upload_photo(api, user, b""), 400, "empty_file")
    assert_error(await upload_photo(api, user, b"GIF89a" + b"\x00" * 30), 400, "unsupported_media_type")
    assert (await api.get(PHOTOS, token=user.access)).body == []


# -- quotas and rates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"media_quota_bytes": 6000}])
async def test_the_storage_quota_counts_photos_and_attachments_even_at_once(api, services):
    user, other = await seed_user(services, "quota"), await seed_user(services, "quota")
    cid = await make_conversation(services, user.id, other.id)
    image = png_bytes((32, 32), (9, 9, 9))
    first = await upload_photo(api, user, image)
    assert first.status == 201, first.body
    per_image = await used_bytes(services, user.id)
    assert 0 < per_image <= 3000
    # Many uploads at once cannot all pass a check made before any of them was counted.
    answers = await asyncio.gather(*(upload_attachment(api, cid, user, image, "image/png") for _ in range(8)))
    statuses = sorted(r.status for r in answers)
    room = 6000 // per_image - 1
    assert statuses == [201] * room + [413] * (8 - room), statuses
    refused = next(r for r in answers if r.status == 413)
    assert_error(refused, 413, "storage_quota_exceeded")
    assert await used_bytes(services, user.id) == per_image * (room + 1)
    assert_error(await upload_photo(api, user, image), 413, "storage_quota_exceeded")
    # Deleting frees room.
    assert (await api.delete(f"{PHOTOS}{first.body['id']}/", token=user.access)).status == 204
    assert (await upload_photo(api, user, image)).status == 201
    # A document (stored as it came) counts its own size.
    assert_error(await upload_attachment(api, cid, user, b"%PDF-" + b"x" * 5000, "application/pdf"), 413)


@pytest.mark.parametrize("settings_overrides", [{"uploads_per_hour": 3}])
async def test_uploads_per_hour_are_limited_across_photos_and_attachments(api, services):
    user, other = await seed_user(services, "rate"), await seed_user(services, "rate")
    cid = await make_conversation(services, user.id, other.id)
    assert (await upload_photo(api, user, png_bytes())).status == 201
    assert (await upload_attachment(api, cid, user, b"hello\n", "text/plain")).status == 201
    assert (await api.put(PICTURE, body=png_bytes(), token=user.access)).status == 200
    for r in (await upload_photo(api, user, png_bytes()), await upload_attachment(api, cid, user, png_bytes())):
        assert_error(r, 429, "rate_limited")
        assert 1100 <= int(r.headers["Retry-After"]) <= 1201  # an hour holds three: one every 20 minutes
    # Another user has a budget of their own.
    assert (await upload_photo(api, other, png_bytes())).status == 201


# -- clean-up ------------------------------------------------------------------------------------------------


async def test_the_sweep_removes_unsent_attachments_and_keeps_sent_ones(api, services):
    a, b = await seed_user(services, "sweep"), await seed_user(services, "sweep")
    cid = await make_conversation(services, a.id, b.id)
    sent = (await upload_attachment(api, cid, a, png_bytes(color=(1, 1, 1)))).body
    unsent = (await upload_attachment(api, cid, a, png_bytes(color=(2, 2, 2)))).body
    fresh = (await upload_attachment(api, cid, b, b"%PDF-1.4 fresh", "application/pdf")).body
    assert (await send_rest(api, cid, a, "", attachment_id=sent["id"])).status == 201
    before = await used_bytes(services, a.id)
    # Age two of them past the TTL: the sent one and the unsent one.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=services.settings.unsent_attachment_ttl_s + 60)
    await services.store.attachments.update_many(
        {"_id": {"$in": [sent["id"], unsent["id"]]}}, {"$set": {"created_at": old}}
    )

    # Two nodes sweeping at the same moment remove it once between them.
    sweeper = services.media.sweeper
    assert sum(await asyncio.gather(sweeper.sweep(), sweeper.sweep())) == 1
    assert (await fetch_media(api, unsent["url"])).code == 404
    assert await services.store.attachments.find_one({"_id": unsent["id"]}) is None
    assert (await fetch_media(api, sent["url"])).code == 200
    assert (await fetch_media(api, fresh["url"])).code == 200
    assert await used_bytes(services, a.id) < before
    # Too late to send it now.
    late = await send_rest(api, cid, a, "", attachment_id=unsent["id"])
    assert_error(late, 404, "attachment_not_found")
    history = await api.get(f"/api/conversations/{cid}/messages/", token=b.access)
    assert history.body["results"][0]["attachment"]["id"] == sent["id"]


async def test_remove_user_files_removes_photos_and_attachments_of_that_user_only(api, services):
    a, b = await seed_user(services, "gone"), await seed_user(services, "stay")
    cid = await make_conversation(services, a.id, b.id)
    photos = [(await upload_photo(api, a, png_bytes(color=(i, 0, 0)))).body for i in range(2)]
    attachments = [(await upload_attachment(api, cid, a, png_bytes(color=(0, i, 0)))).body for i in range(2)]
    assert (await send_rest(api, cid, a, "", attachment_id=attachments[0]["id"])).status == 201
    kept_photo = (await upload_photo(api, b, png_bytes())).body
    kept_attachment = (await upload_attachment(api, cid, b, b"%PDF-1.4 b's", "application/pdf")).body

    assert await remove_user_files(services.store, services.media, a.id) == 4
    for item in (*photos, *attachments):
        assert (await fetch_media(api, item["url"])).code == 404
        for url in item.get("thumbnails", {}).values():
            assert (await fetch_media(api, url)).code == 404
    assert (await api.get(PHOTOS, token=a.access)).body == []
    assert (await api.get(ME, token=a.access)).body["profile_picture"] is None
    assert await services.store.attachments.count_documents({"uploader_id": a.id}) == 0
    assert await used_bytes(services, a.id) == 0
    # The message that carried one shows no attachment now.
    history = await api.get(f"/api/conversations/{cid}/messages/", token=b.access)
    assert history.body["results"][0]["attachment"] is None
    # The other user's files stay; and a second call finds nothing left.
    assert (await fetch_media(api, kept_photo["url"])).code == 200
    assert (await fetch_media(api, kept_attachment["url"])).code == 200
    assert await remove_user_files(services.store, services.media, a.id) == 0


@pytest.mark.parametrize("settings_overrides", [{"image_concurrency": 2}])
async def test_images_are_decoded_off_the_event_loop_two_at_a_time(api, services, monkeypatch):
    import services.media.images as images

    running: list[int] = []
    peak = 0
    threads: set[int] = set()
    real = images.reencode

    def slow_reencode(data: bytes, limits: images.ImageLimits) -> images.ProcessedImage:
        nonlocal peak
        threads.add(threading.get_ident())
        running.append(1)
        peak = max(peak, len(running))
        time.sleep(0.2)
        running.pop()
        return real(data, limits)

    monkeypatch.setattr(images, "reencode", slow_reencode)
    user = await seed_user(services, "pool")
    started = time.monotonic()
    uploads = [upload_photo(api, user, png_bytes(color=(i, i, i))) for i in range(6)]
    answered_at: list[float] = []

    async def profile_meanwhile() -> None:
        await asyncio.sleep(0.05)
        asked = time.monotonic()
        assert (await api.get(ME, token=user.access)).status == 200
        answered_at.append(time.monotonic() - asked)

    answers, _ = await asyncio.gather(asyncio.gather(*uploads), profile_meanwhile())
    # The event loop stayed free meanwhile: a request that decodes nothing did not wait for the decodes.
    assert answered_at[0] < 0.3, answered_at
    assert sorted(r.status for r in answers) == [201] * 6
    assert peak == 2 and threading.get_ident() not in threads
    assert time.monotonic() - started >= 0.55  # six decodes, two at a time, 0.2 s each


@pytest.mark.parametrize("settings_overrides", [{"unsent_attachment_ttl_s": 0.0, "media_sweep_interval_s": 1.0}])
async def test_every_node_sweeps_on_its_own_once_started(api, services):
    a, b = await seed_user(services, "auto"), await seed_user(services, "auto")
    cid = await make_conversation(services, a.id, b.id)
    unsent = (await upload_attachment(api, cid, a, b"%PDF-1.4 forgotten", "application/pdf")).body
    deadline = time.monotonic() + 5
    while (await fetch_media(api, unsent["url"])).code != 404:
        assert time.monotonic() < deadline, "the node's sweep did not run"
        await asyncio.sleep(0.1)
    assert await services.store.attachments.find_one({"_id": unsent["id"]}) is None

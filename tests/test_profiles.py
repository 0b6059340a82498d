"""Profiles over REST against the real embedded MongoDB: the own profile, public profiles, profile pictures
stored and served back, and the JSON envelope on routes and methods that do not exist."""

from __future__ import annotations

import base64
import datetime as dt
import io
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from PIL import Image

from services.matching.location import LocationPrivacy, distance_m, snap
from services.storage.documents import relation_document
from tests.support import assert_error, stored_media

ME = "/api/users/me/"
PICTURE = "/api/users/me/picture/"

# Real 2x2 images as an image library writes them (each decodes as its format).
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1x"
    "eXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAAR"
    "CAACAAIDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEG"
    "E1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWG"
    "h4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEB"
    "AQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYk"
    "NOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0"
    "tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDHooorhPqD/9k="
)
WEBP = base64.b64decode("UklGRh4AAABXRUJQVlA4TBEAAAAvAUAAAAdQjyLXo/+BiOh/AAA=")


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid PNG built chunk by chunk, so tests can make as many distinct ones as they need."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = png()


def adult_birthdate(years: int) -> str:
    today = dt.datetime.now(dt.UTC).date()
    return today.replace(year=today.year - years, day=min(today.day, 28)).isoformat()


def assert_coarse(shown: dict[str, float], sent: dict[str, float]) -> None:
    """A location shown back is the stored, coarse one: a node of the grid, as far from the sent position
    as the secret offset and the snap put it (docs/security.md, "Location privacy")."""
    rules = LocationPrivacy()
    point = [shown["lon"], shown["lat"]]
    assert snap(point[0], point[1], rules.grid_m) == point, shown
    away = distance_m(point, [sent["lon"], sent["lat"]])
    assert rules.nearest_to_truth_m - 1 <= away <= rules.offset_max_m + rules.grid_m / 2**0.5 + 1, (shown, away)


async def raw_get(api: Any, url_or_path: str) -> Any:
    """GET without JSON parsing (media bytes), by path or by an absolute URL of this server."""
    path = urlsplit(url_or_path).path if "://" in url_or_path else url_or_path
    return await api.client.fetch(path, method="GET", raise_error=False)


# -- own profile ---------------------------------------------------------------------------------------


async def test_get_me_is_the_own_profile(api):
    user = await api.user("me")
    r = await api.get(ME, token=user.access)
    assert r.status == 200
    assert r.body["id"] == user.id and r.body["username"] == user.username
    assert r.body["birthdate"] == "1995-06-15"
    assert {"email", "interested_in", "location", "age_min", "age_max", "created_at"} <= set(r.body)
    assert "password_hash" not in r.body and "username_key" not in r.body


async def test_patch_sets_every_profile_field(api):
    user = await api.user("patch")
    birthdate = adult_birthdate(25)
    paris = {"lat": 48.8566, "lon": 2.3522}
    changes = {
        "display_name": "Léa",
        "bio": "Climbing, jazz, and long walks 🌿",
        "birthdate": birthdate,
        "gender": "woman",
        "interested_in": ["man", "nonbinary"],
        "location": paris,
        "age_min": 24,
        "age_max": 35,
        "email": "lea@example.org",
    }
    r = await api.patch(ME, changes, token=user.access)
    assert r.status == 200, r.body
    again = await api.get(ME, token=user.access)
    for body in (r.body, again.body):
        for key, value in changes.items():
            if key != "location":
                assert body[key] == value, key
        assert_coarse(body["location"], paris)
        assert body["location"] == r.body["location"]
        assert body["age"] == 25
        assert body["username"] == user.username


async def test_patch_is_partial_and_integer_coordinates_are_accepted(api):
    user = await api.user("partial")
    await api.patch(ME, {"display_name": "Max", "bio": "first"}, token=user.access)
    r = await api.patch(ME, {"bio": "second", "location": {"lat": -33, "lon": 151}}, token=user.access)
    assert r.status == 200
    assert r.body["display_name"] == "Max" and r.body["bio"] == "second"
    assert_coarse(r.body["location"], {"lat": -33, "lon": 151})
    empty = await api.patch(ME, {}, token=user.access)
    assert empty.status == 200 and empty.body == (await api.get(ME, token=user.access)).body


async def test_null_clears_each_field(api):
    user = await api.user("clear")
    full = {
        "display_name": "Name",
        "bio": "Bio",
        "birthdate": adult_birthdate(40),
        "gender": "man",
        "interested_in": ["woman"],
        "location": {"lat": 1.5, "lon": 2.5},
        "age_min": 30,
        "age_max": 45,
        "email": "x@example.com",
    }
    assert (await api.patch(ME, full, token=user.access)).status == 200
    cleared = {key: None for key in full}
    r = await api.patch(ME, cleared, token=user.access)
    assert r.status == 200, r.body
    again = await api.get(ME, token=user.access)
    for body in (r.body, again.body):
        for key in full:
            expected: list[str] | None = [] if key == "interested_in" else None
            assert body[key] == expected, key
        assert body["age"] is None


async def test_duplicate_interests_are_stored_once(api):
    user = await api.user("dupes")
    r = await api.patch(ME, {"interested_in": ["woman", "man", "woman"]}, token=user.access)
    assert r.status == 200 and r.body["interested_in"] == ["woman", "man"]


def under_age_birthdate() -> str:
    today = dt.datetime.now(dt.UTC).date()
    return dt.date(today.year - 17, 1, 1).isoformat()


def future_birthdate() -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("display_name", ""),
        ("display_name", "x" * 51),
        ("display_name", 7),
        ("bio", "x" * 501),
        ("bio", ["x"]),
        ("birthdate", "under_age"),
        ("birthdate", "future"),
        ("birthdate", "15/06/1995"),
        ("birthdate", 19950615),
        ("gender", "other"),
        ("gender", True),
        ("interested_in", "man"),
        ("interested_in", ["man", "elf"]),
        ("interested_in", ["man", "woman", "nonbinary", "man"]),
        ("location", {"lat": 90.5, "lon": 0}),
        ("location", {"lat": 0, "lon": -180.5}),
        ("location", {"lat": 0}),
        ("location", {"lat": 0, "lon": 0, "alt": 3}),
        ("location", {"lat": "0", "lon": "0"}),
        ("location", {"lat": True, "lon": 0}),
        ("location", "48.85,2.35"),
        ("age_min", 17),
        ("age_min", 121),
        ("age_min", "30"),
        ("age_min", 30.5),
        ("age_max", -1),
        ("age_max", False),
        ("email", "nobody"),
        ("email", "a@b"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else type(v).__name__,
)
async def test_bad_values_are_400_with_fields_and_change_nothing(api, field, value):
    user = await api.user("bad")
    if value == "under_age":
        value = under_age_birthdate()
    elif value == "future":
        value = future_birthdate()
    before = (await api.get(ME, token=user.access)).body
    # A valid change alongside the bad one: validation is all or nothing.
    companion = "display_name" if field == "bio" else "bio"
    r = await api.patch(ME, {field: value, companion: "must not be saved"}, token=user.access)
    error = assert_error(r, 400)
    assert any(key == field or key.startswith(field + ".") for key in error["fields"]), error
    assert (await api.get(ME, token=user.access)).body == before


async def test_age_min_above_age_max_is_400_in_one_patch_or_across_two(api):
    user = await api.user("ages")
    assert_error(await api.patch(ME, {"age_min": 40, "age_max": 30}, token=user.access), 400, None, "age_min")
    assert (await api.patch(ME, {"age_max": 30}, token=user.access)).status == 200
    assert_error(await api.patch(ME, {"age_min": 31}, token=user.access), 400, None, "age_min")
    me = await api.get(ME, token=user.access)
    assert me.body["age_min"] is None and me.body["age_max"] == 30
    equal = await api.patch(ME, {"age_min": 30}, token=user.access)
    assert equal.status == 200 and equal.body["age_min"] == equal.body["age_max"] == 30
    # Clearing the upper bound lifts the constraint.
    r = await api.patch(ME, {"age_max": None, "age_min": 50}, token=user.access)
    assert r.status == 200 and r.body["age_min"] == 50 and r.body["age_max"] is None


@pytest.mark.parametrize("field", ["username", "password", "id", "picture", "profile_picture", "created_at"])
async def test_patch_cannot_touch_fields_outside_the_profile(api, field):
    user = await api.user("fixed")
    assert_error(await api.patch(ME, {field: "x"}, token=user.access), 400, None, field)


async def test_patch_body_errors(api):
    user = await api.user("body")
    assert_error(await api.patch(ME, body=b"{bio:", token=user.access), 400, "invalid_json")
    assert_error(await api.patch(ME, body=b"[]", token=user.access), 400, "invalid_json")
    assert_error(await api.patch(ME, body=b"", token=user.access), 400, "invalid_json")
    assert_error(await api.patch(ME, {"bio": "x"}), 401)
    assert_error(await api.get(ME), 401)


# -- public profiles -----------------------------------------------------------------------------------

PRIVATE_KEYS = {
    "email",
    "password",
    "password_hash",
    "username_key",
    "birthdate",
    "location",
    "interested_in",
    "age_min",
    "age_max",
    "deleted",
    "_id",
}


async def test_public_profile_shows_public_fields_only(api):
    viewer = await api.user("viewer")
    owner = await api.user("owner")
    private = {
        "email": "secret-mail@example.net",
        "location": {"lat": 12.3456, "lon": 65.4321},
        "interested_in": ["nonbinary"],
        "age_min": 33,
        "age_max": 44,
    }
    public = {"display_name": "Owner", "bio": "Hi there", "gender": "nonbinary"}
    assert (await api.patch(ME, {**private, **public}, token=owner.access)).status == 200
    # The viewer suits none of the owner's preferences: their like is what lets them read the profile.
    assert (await api.post("/api/likes/", {"user_id": owner.id}, token=viewer.access)).status == 201
    r = await api.get(f"/api/users/{owner.id}/", token=viewer.access)
    assert r.status == 200
    assert r.body["id"] == owner.id and r.body["username"] == owner.username
    for key, value in public.items():
        assert r.body[key] == value
    assert isinstance(r.body["age"], int) and r.body["age"] >= 18
    assert "profile_picture" in r.body
    assert not PRIVATE_KEYS & set(r.body), r.body
    text = orjson.dumps(r.body).decode()
    for leak in ("secret-mail", "12.3456", "65.4321", "1995-06-15", "argon2"):
        assert leak not in text
    # Seeing oneself through the public endpoint shows the same public view.
    own = await api.get(f"/api/users/{owner.id}/", token=owner.access)
    assert own.status == 200 and not PRIVATE_KEYS & set(own.body)


async def test_public_profile_errors(api):
    user = await api.user("lookup")
    assert_error(await api.get("/api/users/987654321/", token=user.access), 404, "not_found")
    assert_error(await api.get("/api/users/0/", token=user.access), 404)
    assert_error(await api.get(f"/api/users/{user.id}/"), 401)
    assert_error(await api.get(f"/api/users/{user.id}/", token=user.refresh), 401)
    assert_error(await api.get("/api/users/abc/", token=user.access), 404)
    assert_error(await api.get("/api/users/-1/", token=user.access), 404)
    assert_error(await api.get("/api/users/99999999999999999999/", token=user.access), 404)


async def test_a_block_either_way_hides_the_profile(api, services):
    a = await api.user("blocker")
    b = await api.user("blocked")
    c = await api.user("bystander")
    await services.store.blocks.insert_one(relation_document(a.id, b.id, created_at=dt.datetime.now(dt.UTC)))
    assert_error(await api.get(f"/api/users/{b.id}/", token=a.access), 404)
    assert_error(await api.get(f"/api/users/{a.id}/", token=b.access), 404)
    assert (await api.get(f"/api/users/{a.id}/", token=c.access)).status == 200


# -- profile pictures ----------------------------------------------------------------------------------


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("data", [JPEG, PNG, WEBP], ids=["jpeg", "png", "webp"])
async def test_picture_is_reencoded_stored_and_served(api, data):
    user = await api.user("pic")
    # The declared type is ignored: the bytes decide.
    r = await api.put(PICTURE, body=data, token=user.access, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, r.body
    assert set(r.body) == {"profile_picture"}
    url = r.body["profile_picture"]
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1") and parts.port == api.port
    # Every opaque image is stored as a JPEG, decoded and encoded again (tests/test_photos.py: metadata).
    assert parts.path.startswith("/media/profile_pictures/") and parts.path.endswith(".jpg")
    served = await raw_get(api, url)
    assert served.code == 200
    assert decoded(served.body).size == decoded(data).size
    assert served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served.headers["Content-Security-Policy"]
    assert (await api.get(ME, token=user.access)).body["profile_picture"] == url
    viewer = await api.user("picviewer")
    assert (await api.get(f"/api/users/{user.id}/", token=viewer.access)).body["profile_picture"] == url


async def test_a_new_picture_replaces_the_old_file(api, services):
    user = await api.user("replace")
    first = (await api.put(PICTURE, body=png(rgb=(1, 2, 3)), token=user.access)).body["profile_picture"]
    second_bytes = png(rgb=(4, 5, 6))
    second = (await api.put(PICTURE, body=second_bytes, token=user.access)).body["profile_picture"]
    assert first != second
    gone = await raw_get(api, first)
    assert gone.code == 404
    assert orjson.loads(gone.body)["error"]["code"] == "not_found"
    pixel = decoded((await raw_get(api, second)).body).convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple) and all(abs(a - b) <= 8 for a, b in zip(pixel, (4, 5, 6), strict=True))
    # Only the second picture's files are left: the image and its two thumbnails.
    name = urlsplit(second).path.removeprefix("/media/").removesuffix(".jpg")
    assert await stored_media(services) == {f"{name}.jpg", f"{name}.128.jpg", f"{name}.512.jpg"}


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (b"<!doctype html><script>alert(document.cookie)</script>", "image/png"),
        (b"just some text, named picture.png", "image/png"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml"),
        (
            b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
            "image/gif",
        ),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "image/webp"),
        (b"\x89PNG", "image/png"),
    ],
    ids=["html", "text", "svg", "gif", "pdf", "riff-not-webp", "truncated-png-magic"],
)
async def test_non_images_are_400_unsupported_media_type(api, data, declared):
    user = await api.user("notimg")
    r = await api.put(PICTURE, body=data, token=user.access, headers={"Content-Type": declared})
    assert_error(r, 400, "unsupported_media_type")
    assert (await api.get(ME, token=user.access)).body["profile_picture"] is None


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1024}])
async def test_oversized_picture_is_413_and_the_limit_itself_fits(api, settings_overrides):
    user = await api.user("big")
    limit = settings_overrides["max_upload_bytes"]
    too_big = PNG + b"\x00" * (limit + 1 - len(PNG))
    assert_error(await api.put(PICTURE, body=too_big, token=user.access), 413)
    assert (await api.get(ME, token=user.access)).body["profile_picture"] is None
    exactly = PNG + b"\x00" * (limit - len(PNG))
    r = await api.put(PICTURE, body=exactly, token=user.access)
    assert r.status == 200, r.body
    assert decoded((await raw_get(api, r.body["profile_picture"])).body).size == (2, 2)


async def test_empty_picture_is_400_and_unauthenticated_upload_is_401(api):
    user = await api.user("empty")
    assert_error(await api.put(PICTURE, body=b"", token=user.access), 400, "empty_file")
    assert_error(await api.put(PICTURE, body=PNG), 401)
    assert_error(await api.put(PICTURE, body=PNG, token=user.refresh), 401)


async def test_media_does_not_serve_outside_its_folder(api, services):
    data_dir = Path(services.settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "private.txt").write_text("top secret")
    user = await api.user("trav")
    assert (await api.put(PICTURE, body=PNG, token=user.access)).status == 200
    for path in ("/media/../private.txt", "/media/%2e%2e/private.txt", "/media/..%2fprivate.txt"):
        r = await raw_get(api, path)
        assert r.code in (403, 404), (path, r.code)
        assert b"top secret" not in (r.body or b"")
    missing = await raw_get(api, "/media/profile_pictures/nothing-here.png")
    assert missing.code == 404
    assert orjson.loads(missing.body)["error"]["code"] == "not_found"


# -- routes and methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/api/"),
        ("GET", "/api/users/me"),
        ("POST", "/api/registerx/"),
        ("DELETE", "/api/nothing/here/"),
        ("GET", "/api/users/me/extra/"),
        ("PUT", "/api/users/me/picture/extra/"),
    ],
)
async def test_unknown_routes_are_json_404(api, method, path):
    body = b"{}" if method in ("POST", "PUT") else None
    assert_error(await api.request(method, path, body=body), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/register/"),
        ("PUT", "/api/token/"),
        ("GET", "/api/token/refresh/"),
        ("PUT", ME),
        ("POST", ME),
        ("GET", PICTURE),
        ("DELETE", "/api/users/1/"),
        ("POST", "/livez"),
    ],
)
async def test_wrong_methods_are_json_405(api, method, path):
    user = await api.user("method")
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    assert_error(await api.request(method, path, body=body, token=user.access), 405, "method_not_allowed")


async def test_probes(api):
    live = await api.get("/livez")
    assert live.status == 200 and live.body == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200 and ready.body["status"] == "ok" and ready.body["checks"]["mongodb"] is True

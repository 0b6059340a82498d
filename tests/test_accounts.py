"""Accounts over REST against the real embedded MongoDB: registration, sign-in, refresh rotation, and the
ways a bearer token can be wrong. Every failure must be the JSON error envelope, never HTML or a 500."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid
import warnings
from typing import Any

import jwt
import orjson
import pytest

from services.accounts.auth import LEEWAY_S, REQUIRED_CLAIMS, TokenError
from tests.support import PASSWORD, ApiClient, Response, assert_error

ME = "/api/users/me/"
DROP = object()


def years_ago(years: int, today: dt.date) -> dt.date:
    """The birth date of someone whose `years`-th birthday is today (Feb 29 falls back to Feb 28)."""
    try:
        return today.replace(year=today.year - years)
    except ValueError:
        return today.replace(year=today.year - years, day=28)


def turns_tomorrow(years: int, today: dt.date) -> dt.date:
    """The birth date of someone whose `years`-th birthday is tomorrow (Feb 29 falls on Mar 1)."""
    tomorrow = today + dt.timedelta(days=1)
    try:
        return tomorrow.replace(year=tomorrow.year - years)
    except ValueError:
        return dt.date(tomorrow.year - years, 3, 1)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def make_claims(user_id: Any, /, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "user_id": user_id,
        "token_type": "access",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    for key, value in changes.items():
        if value is DROP:
            claims.pop(key)
        else:
            claims[key] = value
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    header = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
    return f"{header}.{b64(orjson.dumps(claims))}."


async def register(api: ApiClient, username: str, password: str = PASSWORD, **profile: Any) -> Response:
    return await api.post("/api/register/", {"username": username, "password": password, **profile})


async def login(api: ApiClient, username: str, password: str = PASSWORD) -> Response:
    return await api.post("/api/token/", {"username": username, "password": password})


def unique_name(prefix: str = "acc") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- registration ----------------------------------------------------------------------------------------


async def test_register_answers_201_with_the_own_profile(api, services):
    birthdate = years_ago(30, utc_today())
    r = await register(
        api,
        "Sophie.M-92",
        email="sophie@example.com",
        display_name="Sophie",
        birthdate=birthdate.isoformat(),
        gender="woman",
        bio="Hello",
    )
    assert r.status == 201, r.body
    body = r.body
    assert isinstance(body["id"], int) and not isinstance(body["id"], bool) and body["id"] > 0
    assert body["username"] == "Sophie.M-92"
    assert body["email"] == "sophie@example.com"
    assert body["display_name"] == "Sophie"
    assert body["birthdate"] == birthdate.isoformat()
    assert body["age"] == 30
    assert body["gender"] == "woman"
    assert body["bio"] == "Hello"
    assert body["profile_picture"] is None
    assert body["interested_in"] == []
    assert body["location"] is None
    created = dt.datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert body["created_at"].endswith("Z")
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 60
    for secret in ("password", "password_hash", "username_key", "_id"):
        assert secret not in body
    stored = await services.store.users.find_one({"_id": body["id"]})
    assert stored is not None and stored["password_hash"].startswith("$argon2id$")
    # OWASP's Argon2id parameters, not argon2-cffi's 64 MiB / p=4 defaults.
    assert "m=19456,t=2,p=1" in stored["password_hash"]
    assert PASSWORD not in str(stored)


async def test_register_minimal_body_and_second_user_gets_another_id(api):
    first = await register(api, unique_name())
    second = await register(api, unique_name())
    assert first.status == second.status == 201
    assert first.body["id"] != second.body["id"]
    assert first.body["birthdate"] is None and first.body["age"] is None


async def test_duplicate_username_is_409_whatever_the_case(api):
    name = unique_name("Dup")
    assert (await register(api, name)).status == 201
    for attempt in (name, name.lower(), name.upper()):
        r = await register(api, attempt, password="another password")
        assert_error(r, 409, "username_taken", "username")
    # The original account is untouched by the refused attempts.
    assert (await login(api, name)).status == 200
    assert_error(await login(api, name, "another password"), 401, "invalid_credentials")


async def test_concurrent_registrations_of_one_name_create_exactly_one_account(api, services):
    name = unique_name("race")
    variants = [name, name.upper(), name.capitalize(), name, name.swapcase(), name.lower()]
    results = await asyncio.gather(*(register(api, v) for v in variants))
    statuses = sorted(r.status for r in results)
    assert statuses == [201] + [409] * (len(variants) - 1), [(r.status, r.body) for r in results]
    for r in results:
        if r.status == 409:
            assert_error(r, 409, "username_taken")
    assert await services.store.users.count_documents({"username_key": name.lower()}) == 1


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 31, "has space", "émile", "semi;colon", "slash/name", "alice\n", "", " alice", "tab\tname"],
)
async def test_bad_usernames_are_400_on_the_username_field(api, username):
    assert_error(await register(api, username), 400, None, "username")


async def test_short_password_is_400(api):
    assert_error(await register(api, unique_name(), password="seven77"), 400, None, "password")


async def test_password_over_the_limit_is_refused_before_hashing(api, services, monkeypatch):
    limit = services.settings.max_password_chars

    async def no_hashing(password: str) -> str:
        raise AssertionError("a password over the limit reached the hasher")

    monkeypatch.setattr(services.hasher, "hash", no_hashing)
    assert_error(await register(api, unique_name(), password="p" * (limit + 1)), 400, None, "password")
    # Far beyond the limit too (the schema's own bound), still a field error and still no hash.
    assert_error(await register(api, unique_name(), password="p" * 10_000), 400, None, "password")
    monkeypatch.undo()
    name = unique_name()
    assert (await register(api, name, password="p" * limit)).status == 201
    assert (await login(api, name, "p" * limit)).status == 200


async def test_under_18_is_refused_and_18_today_is_accepted(api, services):
    today = utc_today()
    min_age = services.settings.min_age
    r = await register(api, unique_name(), birthdate=turns_tomorrow(min_age, today).isoformat())
    assert_error(r, 400, None, "birthdate")
    r = await register(api, unique_name(), birthdate=years_ago(min_age - 5, today).isoformat())
    assert_error(r, 400, None, "birthdate")
    r = await register(api, unique_name(), birthdate=years_ago(min_age, today).isoformat())
    assert r.status == 201, r.body
    assert r.body["age"] == min_age


@pytest.mark.parametrize("days", [1, 400])
async def test_future_birthdate_is_400(api, days):
    future = utc_today() + dt.timedelta(days=days)
    assert_error(await register(api, unique_name(), birthdate=future.isoformat()), 400, None, "birthdate")


async def test_implausibly_old_birthdate_is_400(api):
    assert_error(await register(api, unique_name(), birthdate="1850-01-01"), 400, None, "birthdate")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", 12345),
        ("username", None),
        ("username", ["alice"]),
        ("password", 12345678),
        ("password", None),
        ("birthdate", 0),
        ("birthdate", 946684800),
        ("birthdate", "2000-13-01"),
        ("birthdate", "2000-02-30"),
        ("birthdate", "01/02/2000"),
        ("birthdate", "2000-01-01T00:00:00"),
        ("birthdate", True),
        ("gender", "robot"),
        ("gender", 1),
        ("email", "not-an-email"),
        ("email", 42),
        ("display_name", 5),
        ("display_name", ""),
        ("bio", "x" * 501),
        ("bio", {"text": "hi"}),
        ("interested_in", "woman"),
        ("interested_in", ["woman", "dragon"]),
        ("location", {"lat": "48.8", "lon": 2.3}),
        ("location", {"lat": 91, "lon": 0}),
        ("location", [48.8, 2.3]),
        ("age_min", "25"),
        ("age_min", 25.5),
        ("age_max", True),
    ],
)
async def test_wrong_types_and_values_are_field_errors(api, field, value):
    body: dict[str, Any] = {"username": unique_name(), "password": PASSWORD, field: value}
    error = assert_error(await api.post("/api/register/", body), 400)
    assert any(key == field or key.startswith(field + ".") for key in error["fields"]), error


async def test_missing_required_fields_are_field_errors(api):
    error = assert_error(await api.post("/api/register/", {"bio": "hi"}), 400)
    assert {"username", "password"} <= set(error["fields"]), error


async def test_unknown_fields_are_refused(api):
    body = {"username": unique_name(), "password": PASSWORD, "is_admin": True, "id": 1}
    error = assert_error(await api.post("/api/register/", body), 400, None, "is_admin", "id")
    assert len(error["fields"]) == 2


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"username": "x",}', b"not json", b"\xff\xfe\x00", b'"\\ud800"', b"1e400", b"[" * 5000 + b"]" * 5000],
)
async def test_malformed_json_is_400_invalid_json(api, raw):
    assert_error(await api.post("/api/register/", body=raw), 400, "invalid_json")


@pytest.mark.parametrize("raw", [b"[]", b'["username"]', b'"text"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_is_400(api, raw):
    assert_error(await api.post("/api/register/", body=raw), 400, "invalid_json")


@pytest.mark.parametrize("raw", [b"", b"   \n"])
async def test_empty_body_is_400(api, raw):
    assert_error(await api.post("/api/register/", body=raw), 400, "invalid_json")


async def test_body_over_max_body_bytes_is_413(api, services):
    limit = services.settings.max_body_bytes
    body = orjson.dumps({"username": unique_name(), "password": PASSWORD, "bio": "x" * limit})
    assert len(body) > limit
    assert_error(await api.post("/api/register/", body=body), 413, "body_too_large")
    assert_error(await api.post("/api/token/", body=body), 413, "body_too_large")


# -- tokens ----------------------------------------------------------------------------------------------


async def test_token_pair_is_hs256_with_every_required_claim(api, services):
    name = unique_name()
    user_id = (await register(api, name)).body["id"]
    r = await login(api, name)
    assert r.status == 200 and set(r.body) == {"access", "refresh"}
    secret = services.settings.jwt_secret
    for token, kind, ttl in (
        (r.body["access"], "access", services.settings.access_token_ttl_s),
        (r.body["refresh"], "refresh", services.settings.refresh_token_ttl_s),
    ):
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert set(claims) == set(REQUIRED_CLAIMS)
        assert claims["user_id"] == user_id and claims["token_type"] == kind
        assert claims["exp"] - claims["iat"] == ttl
    me = await api.get(ME, token=r.body["access"])
    assert me.status == 200 and me.body["id"] == user_id


async def test_login_is_case_insensitive_on_the_username(api):
    name = unique_name("Case")
    user_id = (await register(api, name)).body["id"]
    for attempt in (name.lower(), name.upper()):
        r = await login(api, attempt)
        assert r.status == 200, r.body
        assert (await api.get(ME, token=r.body["access"])).body["id"] == user_id


async def test_wrong_password_and_unknown_user_answer_the_same(api):
    name = unique_name()
    await register(api, name)
    wrong = await login(api, name, PASSWORD + "!")
    unknown = await login(api, unique_name("ghost"), PASSWORD)
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(unknown, 401, "invalid_credentials")
    assert wrong.body == unknown.body


async def test_login_with_an_overlong_password_is_refused_without_hashing(api, services, monkeypatch):
    name = unique_name()
    await register(api, name)

    async def no_verify(password_hash: str | None, password: str) -> bool:
        raise AssertionError("an overlong password reached the hasher")

    monkeypatch.setattr(services.hasher, "verify", no_verify)
    overlong = "p" * (services.settings.max_password_chars + 1)
    assert_error(await login(api, name, overlong), 401, "invalid_credentials")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "someone"},
        {"password": PASSWORD},
        {"username": 1, "password": PASSWORD},
        {"username": "a", "password": ""},
    ],
)
async def test_token_body_errors_are_400(api, body):
    assert_error(await api.post("/api/token/", body), 400)


async def test_token_malformed_json_is_400(api):
    assert_error(await api.post("/api/token/", body=b"{username:"), 400, "invalid_json")


# -- refresh rotation ------------------------------------------------------------------------------------


async def refresh(api: ApiClient, token: Any) -> Response:
    return await api.post("/api/token/refresh/", {"refresh": token})


# Theft detection itself: no grace for a retry, every reuse revokes (REFRESH_REUSE_GRACE has its own tests).
STRICT_REUSE = pytest.mark.parametrize("settings_overrides", [{"refresh_reuse_grace_s": 0}], indirect=True)


@STRICT_REUSE
async def test_refresh_rotates_and_the_old_token_stops_working(api, settings_overrides):
    user = await api.user("rot")
    r = await refresh(api, user.refresh)
    assert r.status == 200 and set(r.body) == {"access", "refresh"}
    assert r.body["refresh"] != user.refresh and r.body["access"] != user.access
    me = await api.get(ME, token=r.body["access"])
    assert me.status == 200 and me.body["id"] == user.id
    # The next link of the chain works, and so on.
    r2 = await refresh(api, r.body["refresh"])
    assert r2.status == 200
    r3 = await refresh(api, r2.body["refresh"])
    assert r3.status == 200
    assert_error(await refresh(api, r2.body["refresh"]), 401, "token_revoked")


@STRICT_REUSE
async def test_reusing_a_rotated_token_revokes_the_whole_family(api, settings_overrides):
    user = await api.user("reuse")
    rotated = await refresh(api, user.refresh)
    assert rotated.status == 200
    # The old token comes back: it leaked, so everything issued from that sign-in ends.
    assert_error(await refresh(api, user.refresh), 401, "token_revoked")
    assert_error(await refresh(api, rotated.body["refresh"]), 401, "token_revoked")
    assert_error(await refresh(api, user.refresh), 401, "token_revoked")
    # A fresh sign-in starts a new family that works.
    again = await login(api, user.username)
    assert again.status == 200
    assert (await refresh(api, again.body["refresh"])).status == 200


@STRICT_REUSE
async def test_revoking_one_family_leaves_other_sign_ins_alone(api, settings_overrides):
    user = await api.user("fam")
    phone = await login(api, user.username)
    assert (await refresh(api, user.refresh)).status == 200
    assert_error(await refresh(api, user.refresh), 401, "token_revoked")
    assert (await refresh(api, phone.body["refresh"])).status == 200


async def test_a_token_reused_within_the_grace_is_taken_as_a_retry_once_then_as_a_theft(api):
    user = await api.user("grace")
    lost = await refresh(api, user.refresh)  # its answer never reached the page (a reload)
    assert lost.status == 200
    retried = await refresh(api, user.refresh)
    assert retried.status == 200 and retried.body["refresh"] not in (user.refresh, lost.body["refresh"])
    assert (await refresh(api, retried.body["refresh"])).status == 200
    # Once only: the same token a third time is a theft, and the whole family ends.
    assert_error(await refresh(api, user.refresh), 401, "token_revoked")
    assert_error(await refresh(api, lost.body["refresh"]), 401, "token_revoked")


@pytest.mark.parametrize("settings_overrides", [{"refresh_reuse_grace_s": 0.5}], indirect=True)
async def test_a_token_reused_after_the_grace_revokes_its_family(api, settings_overrides):
    user = await api.user("late")
    rotated = await refresh(api, user.refresh)
    assert rotated.status == 200
    await asyncio.sleep(0.8)
    assert_error(await refresh(api, user.refresh), 401, "token_revoked")
    assert_error(await refresh(api, rotated.body["refresh"]), 401, "token_revoked")


async def test_a_rotation_racing_a_revocation_hands_out_nothing(api, services):
    user = await api.user("racy")
    jti = jwt.decode(user.refresh, options={"verify_signature": False})["jti"]
    record = await services.store.refresh_tokens.find_one({"_id": jti})
    assert record is not None
    # The reuse detector revoked the family after the rotation claimed its token but before the
    # rotation inserted the successor: the successor must be born revoked.
    await services.store.refresh_tokens.update_many({"family": record["family"]}, {"$set": {"revoked": True}})
    with pytest.raises(TokenError):
        await services.tokens.issue(user.id, family=record["family"])
    live = await services.store.refresh_tokens.count_documents({"family": record["family"], "revoked": False})
    assert live == 0


async def test_refresh_token_is_not_an_access_token_and_the_reverse(api):
    user = await api.user("types")
    assert_error(await api.get(ME, token=user.refresh), 401)
    assert_error(await refresh(api, user.access), 401)
    # Neither failed attempt consumed the refresh token.
    assert (await refresh(api, user.refresh)).status == 200


async def test_refresh_with_forged_expired_or_unknown_tokens_is_401(api, services):
    user = await api.user("forge")
    secret = services.settings.jwt_secret
    unknown = jwt.encode(make_claims(user.id, token_type="refresh"), secret, algorithm="HS256")
    assert_error(await refresh(api, unknown), 401, "token_revoked")
    forged = jwt.encode(make_claims(user.id, token_type="refresh"), "another-secret-" + "y" * 40, algorithm="HS256")
    assert_error(await refresh(api, forged), 401, "token_invalid")
    now = int(time.time())
    expired = jwt.encode(
        make_claims(user.id, token_type="refresh", iat=now - 3600, exp=now - 60), secret, algorithm="HS256"
    )
    assert_error(await refresh(api, expired), 401, "token_expired")
    assert_error(await refresh(api, "garbage"), 401)


async def test_the_refresh_token_of_a_deleted_account_gets_no_new_pair(api, services):
    user = await api.user("gone")
    # The account was just seen alive (cached by this node): a refresh must still not trust that.
    assert (await api.get(ME, token=user.access)).status == 200
    await services.store.users.update_one({"_id": user.id}, {"$set": {"deleted": True}})
    refused = await refresh(api, user.refresh)
    invalid = await refresh(api, "garbage")
    assert_error(refused, 401, "token_invalid")
    assert (refused.status, refused.body) == (invalid.status, invalid.body)
    # Nothing was issued: the sign-in's token is the family's only one.
    assert await services.store.refresh_tokens.count_documents({"user_id": user.id}) == 1


@pytest.mark.parametrize("body", [{}, {"refresh": 1}, {"refresh": ""}, {"refresh": None}, {"refresh": "x", "more": 1}])
async def test_refresh_body_errors_are_400(api, body):
    assert_error(await api.post("/api/token/refresh/", body), 400)


# -- attacks on a protected endpoint ---------------------------------------------------------------------


OTHER_SECRET = "an-attacker-guess-" + "z" * 40


def attack_token(name: str, user_id: int, secret: str, valid_access: str) -> str:
    now = int(time.time())
    sign = lambda claims, key=secret, alg="HS256": jwt.encode(claims, key, algorithm=alg)  # noqa: E731
    if name == "expired":
        return sign(make_claims(user_id, iat=now - 3600, exp=now - 60))
    if name == "expired_just_past_leeway":
        return sign(make_claims(user_id, iat=now - 600, exp=now - LEEWAY_S - 2))
    if name == "forged_signature":
        return sign(make_claims(user_id), OTHER_SECRET)
    if name == "alg_none":
        return unsigned(make_claims(user_id))
    if name == "alg_none_capitalised":
        return unsigned(make_claims(user_id), alg="None")
    if name == "alg_none_with_signature":
        header, payload, signature = valid_access.split(".")
        forged_header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
        return f"{forged_header}.{payload}.{signature}"
    if name == "alg_hs512_same_secret":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            return sign(make_claims(user_id), alg="HS512")
    if name == "tampered_payload":
        header, _, signature = valid_access.split(".")
        claims = jwt.decode(valid_access, options={"verify_signature": False})
        claims["user_id"] = user_id + 1
        return f"{header}.{b64(orjson.dumps(claims))}.{signature}"
    if name == "truncated_signature":
        return valid_access[:-4]
    if name.startswith("missing_"):
        return sign(make_claims(user_id, **{name.removeprefix("missing_"): DROP}))
    if name == "user_id_string":
        return sign(make_claims(str(user_id)))
    if name == "user_id_float":
        return sign(make_claims(float(user_id)))
    if name == "user_id_bool":
        return sign(make_claims(True))
    if name == "user_id_null":
        return sign(make_claims(None))
    if name == "user_id_list":
        return sign(make_claims([user_id]))
    if name == "user_id_zero":
        return sign(make_claims(0))
    if name == "user_id_negative":
        return sign(make_claims(-user_id))
    if name == "user_id_beyond_int64":
        return sign(make_claims(2**64 + user_id))
    if name == "token_type_unknown":
        return sign(make_claims(user_id, token_type="admin"))
    if name == "token_type_refresh":
        return sign(make_claims(user_id, token_type="refresh"))
    if name == "iat_far_future":
        return sign(make_claims(user_id, iat=now + 3600, exp=now + 7200))
    if name == "iat_string":
        return sign(make_claims(user_id, iat="yesterday"))
    if name == "exp_string":
        return sign(make_claims(user_id, exp="tomorrow"))
    if name == "jti_number":
        return sign(make_claims(user_id, jti=12345))
    if name == "not_a_jwt":
        return "not-a-jwt"
    if name == "two_segments":
        return "abc.def"
    if name == "bad_base64":
        return "!!!.@@@.###"
    raise AssertionError(name)


ATTACKS = [
    "expired",
    "expired_just_past_leeway",
    "forged_signature",
    "alg_none",
    "alg_none_capitalised",
    "alg_none_with_signature",
    "alg_hs512_same_secret",
    "tampered_payload",
    "truncated_signature",
    *[f"missing_{claim}" for claim in REQUIRED_CLAIMS],
    "user_id_string",
    "user_id_float",
    "user_id_bool",
    "user_id_null",
    "user_id_list",
    "user_id_zero",
    "user_id_negative",
    "user_id_beyond_int64",
    "token_type_unknown",
    "token_type_refresh",
    "iat_far_future",
    "iat_string",
    "exp_string",
    "jti_number",
    "not_a_jwt",
    "two_segments",
    "bad_base64",
]


async def test_a_well_formed_handmade_token_is_accepted(api, services):
    """The attacks below differ from this token in one respect each, so each refusal is about that."""
    user = await api.user("hand")
    token = jwt.encode(make_claims(user.id), services.settings.jwt_secret, algorithm="HS256")
    r = await api.get(ME, token=token)
    assert r.status == 200 and r.body["id"] == user.id


@pytest.mark.parametrize("attack", ATTACKS)
async def test_bad_tokens_are_401_on_a_protected_endpoint(api, services, attack):
    user = await api.user("victim")
    token = attack_token(attack, user.id, services.settings.jwt_secret, user.access)
    expected = "token_expired" if attack.startswith("expired") else None
    assert_error(await api.get(ME, token=token), 401, expected)
    assert_error(await api.patch(ME, {"bio": "pwned"}, token=token), 401)
    # The profile was not changed by the refused PATCH.
    assert (await api.get(ME, token=user.access)).body["bio"] is None


async def test_small_clock_skew_between_nodes_is_tolerated(api, services):
    user = await api.user("skew")
    now = int(time.time())
    ahead = jwt.encode(make_claims(user.id, iat=now + 2), services.settings.jwt_secret, algorithm="HS256")
    assert (await api.get(ME, token=ahead)).status == 200
    behind = jwt.encode(
        make_claims(user.id, iat=now - 600, exp=now - 1), services.settings.jwt_secret, algorithm="HS256"
    )
    assert (await api.get(ME, token=behind)).status == 200


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNzd29yZA==", "Token {access}", "{access}", "Bearer {access} x"],
)
async def test_missing_or_malformed_authorization_header_is_401(api, header):
    user = await api.user("hdr")
    headers = {} if header is None else {"Authorization": header.format(access=user.access)}
    expected = "not_authenticated" if header in (None, "", "Bearer", "Bearer ") else None
    assert_error(await api.get(ME, headers=headers), 401, expected)


async def test_bearer_scheme_is_case_insensitive(api):
    user = await api.user("scheme")
    r = await api.get(ME, headers={"Authorization": f"bearer {user.access}"})
    assert r.status == 200 and r.body["id"] == user.id

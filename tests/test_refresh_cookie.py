"""The browser session cookie of the token endpoints (handlers/auth.py), against a real node.

A page asks for its refresh token as a cookie (`"cookie": true`): HttpOnly, SameSite=Strict, scoped to
/api/token/refresh/, Secure except on http://localhost, and absent from the answer. A refresh without a
token in its body reads the cookie and rotates it; DELETE /api/token/refresh/ ends the session and clears
it. Requests that set, read or clear the cookie from another origin are refused (login CSRF, a sibling
subdomain); the seed's JSON token API is unchanged. Every answer is checked against the API document.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import orjson
import pytest

from handlers import openapi
from services.core.config import Settings
from tests.support import PASSWORD, ApiClient, Response, assert_error, conforms

TOKEN = "/api/token/"
REFRESH = "/api/token/refresh/"
ME = "/api/users/me/"
TRUSTED = "https://app.example"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Every reuse revokes here (no REFRESH_REUSE_GRACE): the tests reuse spent cookies on purpose.
    return {"allowed_origins": f"{TRUSTED}, *", "refresh_reuse_grace_s": 0}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build_document(Settings())


def own_origin(api: ApiClient) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{api.port}"}


def set_cookies(response: Response) -> dict[str, Any]:
    """The Set-Cookie headers of an answer, by cookie name (each a Morsel)."""
    jar: dict[str, Any] = {}
    for header in response.headers.get_list("Set-Cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        jar.update(parsed)
    return jar


def session_cookie(response: Response) -> str:
    """The refresh token an answer set as the session cookie, after checking the cookie's attributes."""
    morsel = set_cookies(response)["refresh_token"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == REFRESH
    assert int(morsel["max-age"]) == Settings().refresh_token_ttl_s
    assert morsel.value.count(".") == 2  # a JWT
    return str(morsel.value)


def cleared(response: Response) -> bool:
    morsel = set_cookies(response).get("refresh_token")
    return morsel is not None and morsel.value == "" and morsel["path"] == REFRESH


async def account(api: ApiClient) -> str:
    user = await api.user("cookie")
    return user.username


async def cookie_sign_in(api: ApiClient, document: dict[str, Any], username: str) -> tuple[str, str]:
    """Sign in asking for the cookie: (access token, the cookie's refresh token)."""
    body = {"username": username, "password": PASSWORD, "cookie": True}
    answer = await api.post(TOKEN, body, headers=own_origin(api))
    conforms(document, "post", TOKEN, answer)
    assert answer.status == 200, answer.body
    assert set(answer.body) == {"access"}, "the refresh token must not reach the page's scripts"
    return answer.body["access"], session_cookie(answer)


async def sign_out(api: ApiClient, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    """DELETE /api/token/refresh/, with a JSON body or none (Tornado's client needs telling that a DELETE
    may have one)."""
    response = await api.client.fetch(
        REFRESH,
        method="DELETE",
        body=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
        allow_nonstandard_methods=True,
        raise_error=False,
    )
    return Response(response.code, orjson.loads(response.body) if response.body else None, response.headers)


async def cookie_refresh(api: ApiClient, cookie: str, headers: dict[str, str] | None = None) -> Response:
    return await api.post(REFRESH, {}, headers={"Cookie": f"refresh_token={cookie}", **(headers or own_origin(api))})


async def test_sign_in_with_the_cookie_leaves_the_refresh_token_out_of_the_answer(api, document):
    username = await account(api)
    access, _ = await cookie_sign_in(api, document, username)
    me = await api.get(ME, token=access)
    assert me.status == 200 and me.body["username"] == username
    # Loopback over plain http: the browser would drop a Secure cookie, so it is not Secure here...
    body = {"username": username, "password": PASSWORD, "cookie": True}
    answer = await api.post(TOKEN, body, headers=own_origin(api))
    assert not set_cookies(answer)["refresh_token"]["secure"]
    # ...and Secure for any other host, where the page must come over https.
    remote = {"Host": "chat.example", "Origin": "https://chat.example"}
    answer = await api.post(TOKEN, {"username": username, "password": PASSWORD, "cookie": True}, headers=remote)
    assert answer.status == 200, answer.body
    assert set_cookies(answer)["refresh_token"]["secure"] is True


async def test_the_json_token_api_is_the_seeds(api, document):
    username = await account(api)
    # From anywhere, with or without an Origin: no cookie is involved.
    for headers in ({}, {"Origin": "https://elsewhere.example"}):
        pair = await api.post(TOKEN, {"username": username, "password": PASSWORD}, headers=headers)
        conforms(document, "post", TOKEN, pair)
        assert set(pair.body) == {"access", "refresh"}
        assert "refresh_token" not in set_cookies(pair)
        rotated = await api.post(REFRESH, {"refresh": pair.body["refresh"]}, headers=headers)
        conforms(document, "post", REFRESH, rotated)
        assert set(rotated.body) == {"access", "refresh"}
        assert "refresh_token" not in set_cookies(rotated)
    # A JSON refresh token may move into the cookie.
    pair = await api.post(TOKEN, {"username": username, "password": PASSWORD})
    moved = await api.post(REFRESH, {"refresh": pair.body["refresh"], "cookie": True}, headers=own_origin(api))
    conforms(document, "post", REFRESH, moved)
    assert set(moved.body) == {"access"}
    assert (await cookie_refresh(api, session_cookie(moved))).status == 200


async def test_a_refresh_reads_and_rotates_the_cookie(api, document):
    username = await account(api)
    _, first = await cookie_sign_in(api, document, username)
    answer = await cookie_refresh(api, first)
    conforms(document, "post", REFRESH, answer)
    assert answer.status == 200 and set(answer.body) == {"access"}
    second = session_cookie(answer)
    assert second != first
    assert (await api.get(ME, token=answer.body["access"])).status == 200
    third = session_cookie(await cookie_refresh(api, second))

    # The spent cookie came back (stolen, or a stale copy): refused and cleared, and its family with it.
    reused = await cookie_refresh(api, first)
    conforms(document, "post", REFRESH, reused)
    assert_error(reused, 401, "token_revoked")
    assert cleared(reused)
    assert_error(await cookie_refresh(api, third), 401, "token_revoked")


async def test_a_refresh_without_a_token_or_a_cookie_is_refused(api, document):
    # Neither is the seed's refresh without its token: 400, as it always was.
    nothing = await api.post(REFRESH, {}, headers=own_origin(api))
    conforms(document, "post", REFRESH, nothing)
    assert_error(nothing, 400, "validation_error", "refresh")
    assert not cleared(nothing)
    null = await api.post(REFRESH, {"refresh": None}, headers={"Cookie": "refresh_token=x", **own_origin(api)})
    assert_error(null, 400, "validation_error", "refresh")
    forged = await cookie_refresh(api, "not.a.token")
    assert_error(forged, 401, "token_invalid")
    assert cleared(forged)
    unknown = await api.post(REFRESH, {"refresh": "x", "cookie": "yes"}, headers=own_origin(api))
    conforms(document, "post", REFRESH, unknown)
    assert_error(unknown, 400, "validation_error", "cookie")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",  # another site: SameSite=Strict keeps its requests from carrying the cookie
        "http://127.0.0.1.evil.example",
        "https://sub.app.example",  # same site, other origin: only the Origin check refuses it
        "null",  # a sandboxed frame or a redirected form
    ],
)
async def test_other_origins_cannot_set_read_or_clear_the_cookie(api, document, origin):
    username = await account(api)
    _, cookie = await cookie_sign_in(api, document, username)
    foreign = {"Origin": origin}

    # Login CSRF: another page signing this browser into an account of its choice.
    forced = await api.post(TOKEN, {"username": username, "password": PASSWORD, "cookie": True}, headers=foreign)
    conforms(document, "post", TOKEN, forced)
    assert_error(forced, 403, "origin_not_allowed")
    assert not set_cookies(forced)

    read = await cookie_refresh(api, cookie, foreign)
    conforms(document, "post", REFRESH, read)
    assert_error(read, 403, "origin_not_allowed")
    assert not set_cookies(read)

    ended = await sign_out(api, {}, {"Cookie": f"refresh_token={cookie}", **foreign})
    conforms(document, "delete", REFRESH, ended)
    assert_error(ended, 403, "origin_not_allowed")

    # The session was left as it was: the cookie still rotates from the page's own origin.
    assert (await cookie_refresh(api, cookie)).status == 200


async def test_listed_origins_and_non_browsers_may_use_the_cookie(api, document):
    username = await account(api)
    _, cookie = await cookie_sign_in(api, document, username)
    # An origin named in ALLOWED_ORIGINS (a separately hosted front end)...
    answer = await cookie_refresh(api, cookie, {"Origin": TRUSTED})
    assert answer.status == 200, answer.body
    # ...and a client that names no origin: not a browser, so no browser's cookie was sent for someone else.
    answer = await cookie_refresh(api, session_cookie(answer), {"User-Agent": "a script"})
    assert answer.status == 200, answer.body
    # `*` in ALLOWED_ORIGINS opens the sockets to any page, never the session cookie.
    assert_error(await cookie_refresh(api, session_cookie(answer), {"Origin": "https://any.example"}), 403)


async def test_sign_out_ends_the_session_and_clears_the_cookie(api, document):
    username = await account(api)
    _, first = await cookie_sign_in(api, document, username)
    current = session_cookie(await cookie_refresh(api, first))

    ended = await sign_out(api, None, {"Cookie": f"refresh_token={current}", **own_origin(api)})
    conforms(document, "delete", REFRESH, ended)
    assert ended.status == 204 and not ended.body
    assert cleared(ended)
    assert_error(await cookie_refresh(api, current), 401, "token_revoked")
    # Ending it again, or with no cookie at all, is no error.
    again = await sign_out(api, {}, {"Cookie": f"refresh_token={current}", **own_origin(api)})
    assert again.status == 204 and cleared(again)
    assert (await sign_out(api, {}, own_origin(api))).status == 204

    # The JSON API signs out with the token in the body; another sign-in of the account lives on.
    pair = (await api.post(TOKEN, {"username": username, "password": PASSWORD})).body
    other = (await api.post(TOKEN, {"username": username, "password": PASSWORD})).body
    ended = await sign_out(api, {"refresh": pair["refresh"]})
    conforms(document, "delete", REFRESH, ended)
    assert ended.status == 204 and not cleared(ended)
    assert_error(await api.post(REFRESH, {"refresh": pair["refresh"]}), 401, "token_revoked")
    assert (await api.post(REFRESH, {"refresh": other["refresh"]})).status == 200
    # Garbage is a session that is over already.
    assert (await sign_out(api, {"refresh": "garbage"})).status == 204
    bad = await sign_out(api, {"refresh": 12})
    conforms(document, "delete", REFRESH, bad)
    assert_error(bad, 400, "validation_error", "refresh")

"""Display names, bios and messages carry no invisible tricks: bidi overrides, zero-width characters,
NUL, ESC and other controls are removed; a display name needs a visible character."""

from __future__ import annotations

import pytest

from services.core.text import clean_line, clean_multiline, has_visible
from tests.support import assert_error
from tests.ws_helpers import join, pair, send_rest

RLO = "\u202e"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl


def test_an_override_cannot_reorder_what_a_reader_sees():
    assert clean_line(f"Sam {RLO}61") == "Sam 61"
    assert clean_multiline(f"meet at {RLO}gpj.exe") == "meet at gpj.exe"


@pytest.mark.parametrize(
    "name", ["   ", "\u200b\u200b", "\u3164", "\u2800\u200b" * 0 + "\ufeff", f"{RLO}\u2066\u2069", "\x00\x1b", "\u200d"]
)
def test_a_name_with_nothing_visible_has_nothing_visible(name):
    assert not has_visible(clean_line(name))


def test_controls_go_and_line_breaks_stay_where_they_make_sense():
    assert clean_multiline("a\x00b\x1b[31mc\x7f\r\nd\te") == "ab[31mc\nd\te"
    assert clean_line("Ann\nMarie\t\x00 ") == "Ann Marie"


def test_emoji_sequences_keep_their_joiners_and_stray_joiners_go():
    assert clean_multiline(f"we are {FAMILY}") == f"we are {FAMILY}"
    assert clean_line(f"Jo\u200dey {FAMILY}") == f"Joey {FAMILY}"


async def test_names_and_bios_are_cleaned_on_the_way_in(api):
    user = await api.user("hygiene", display_name=f"Sam {RLO}61", bio="hi\x00 there\x1b\nsecond line")
    me = await api.get("/api/users/me/", token=user.access)
    assert me.body["display_name"] == "Sam 61"
    assert me.body["bio"] == "hi there\nsecond line"
    for bad in ("   ", "\u200b\u200c", f"{RLO}", "\x00"):
        r = await api.patch("/api/users/me/", {"display_name": bad}, token=user.access)
        assert_error(r, 400, None, "display_name")
    assert (await api.get("/api/users/me/", token=user.access)).body["display_name"] == "Sam 61"


async def test_messages_are_cleaned_and_one_of_only_invisible_characters_is_empty(api, services):
    p = await pair(api, services)
    r = await send_rest(api, p.cid, p.a, f"pay \x1b[2J{RLO}01$ {FAMILY}")
    assert r.status == 201, r.body
    assert r.body["content"] == f"pay [2J01$ {FAMILY}"
    assert_error(await send_rest(api, p.cid, p.a, "\u200b\u2060\x00"), 400, "empty_message")
    ws = await join(api, p.cid, p.b)
    await ws.send({"type": "message", "content": "\ufeff\u200b"})
    error = await ws.recv_type("error")
    assert error["code"] == "empty_message"

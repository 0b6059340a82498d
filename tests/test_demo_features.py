"""The demo page's privacy and trust-and-safety features in a real browser (Chromium through Playwright,
two browser contexts against `server.py`): profile photos, the friendly answer to a rate limit, coarse
distances, editing and unsending messages, muting a conversation and notification preferences.

The screenshots in docs/ (desktop 1280x800 and phone 390x844) are taken along the way; they are written
there only when missing or with UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.demo_helpers import (
    DESKTOP,
    PASSWORD,
    PHONE,
    DemoServer,
    dismiss_toasts,
    launched_chromium,
    portrait_png,
    register,
    require_playwright,
    running_server,
    say,
    screenshot,
    sign_in,
    unexpected,
    upload_file,
    viewport,
    watch,
)

pytestmark = pytest.mark.slow

SLOW_DOWN = re.compile(r"Slow down — try again in \d+\s(s|min)")
PARIS = {"latitude": 48.8566, "longitude": 2.3522}
MONTMARTRE = {"latitude": 48.8867, "longitude": 2.3431}


@pytest.fixture
def sync_api() -> Any:
    return require_playwright()


@pytest.fixture
def server_settings() -> dict[str, str]:
    """Environment of the server on top of the defaults; a test overrides it with its own limits."""
    return {}


@pytest.fixture
def server(tmp_path: Path, mongo_url: str, server_settings: dict[str, str]) -> Iterator[DemoServer]:
    with running_server(tmp_path / "data", mongo_url, server_settings) as node:
        yield node


@pytest.fixture
def browser(sync_api: Any) -> Iterator[Any]:
    with launched_chromium(sync_api) as chromium:
        yield chromium


def names() -> tuple[str, str, str]:
    suffix = uuid.uuid4().hex[:6]
    return f"alice_{suffix}", f"bob_{suffix}", f"carol_{suffix}"


def alice_and_bob(server: DemoServer, alice_name: str, bob_name: str) -> tuple[str, str]:
    """Alice and Bob, each the other's kind, registered over REST: their access tokens."""
    alice_token = server.register(
        alice_name, display_name="Alice", gender="woman", interested_in=["man"], birthdate="1994-03-12"
    )
    return alice_token, server.register(
        bob_name, display_name="Bob", gender="man", interested_in=["woman"], birthdate="1992-08-30"
    )


def open_page(browser: Any, server: DemoServer, problems: list[str], **context: Any) -> Any:
    page = browser.new_context(viewport=DESKTOP, **context).new_page()
    watch(page, problems)
    page.goto(server.base + "/")
    return page


def signed_in(browser: Any, server: DemoServer, problems: list[str], username: str, expect: Any) -> Any:
    """A page of someone whose account exists, signed in and live."""
    page = open_page(browser, server, problems)
    sign_in(page, username)
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    return page


def open_conversation(page: Any, other: str, expect: Any) -> None:
    """Open the conversation with `other` and wait until its socket is open. On a phone the matches are
    the Chats tab's view: a tap on the tab first."""
    expect(page.locator("#app-view")).to_be_visible()  # signed in (after a reload, once the session resumed)
    chats_tab = page.locator(".nav-item[data-panel=chats]")
    if chats_tab.is_visible():
        chats_tab.click()
    page.locator("#match-list .match", has_text=other).click()
    expect(page.locator("#chat-name")).to_have_text(other)
    expect(page.locator("#panel-chat")).to_have_attribute("data-socket", "open")
    expect(page.locator("#chat-presence")).not_to_have_attribute("data-status", "unknown")


MATCH = re.compile("^It\u2019s a match!$")


def match_moment(page: Any, other: str, expect: Any) -> Any:
    """The "It's a match!" dialog of the match with `other`, on screen."""
    moment = page.get_by_role("dialog", name=MATCH)
    expect(moment).to_contain_text(f"You and {other} like each other.")
    return moment


def settle(locator: Any) -> None:
    """Wait until the element's animations are over (a screenshot of a dialog that just opened)."""
    locator.evaluate("el => Promise.all(el.getAnimations({subtree: true}).map(a => a.finished))")


def say_hi(page: Any, other: str, expect: Any) -> None:
    """ "Say hi" in the dialog of the match with `other`: their conversation opens."""
    match_moment(page, other, expect).get_by_role("button", name="Say hi").click()
    expect(page.locator("#chat-name")).to_have_text(other)


def message_actions(page: Any, text: str) -> Any:
    """Open the "⋯" menu of the own message that says `text`; the menu."""
    bubble = page.locator("#messages .message.own", has_text=text)
    bubble.hover()
    bubble.get_by_role("button", name="Message actions").click()
    return page.get_by_role("menu", name="Message actions")


# -- photos and distance ---------------------------------------------------------------------------------


def test_photos_are_uploaded_reordered_and_seen_by_the_other_person(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, _ = names()
    problems: list[str] = []
    geo = {"permissions": ["geolocation"]}

    alice = open_page(browser, server, problems, geolocation=PARIS, **geo)
    register(alice, alice_name, "Alice", "woman", "man", "1994-03-12", "Sunrise hikes and good coffee.")
    expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
    alice.get_by_role("button", name="Profile").click()
    photos = alice.locator("#photo-grid .photo-tile")
    status = alice.locator("#photo-status")

    # Refused uploads: the server's codes, said for a person next to the control.
    alice.locator("#photo-input").set_input_files(files=[upload_file("notes.txt", b"hello", "text/plain")])
    expect(status).to_have_text("That type of file is not supported: use a JPEG, PNG or WebP photo.")
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    alice.locator("#photo-input").set_input_files(files=[upload_file("broken.png", broken)])
    expect(status).to_contain_text("not a readable image")
    expect(photos).to_have_count(0)

    # Two photos, then the second made the profile picture.
    alice.locator("#photo-input").set_input_files(
        files=[upload_file("rose.png", portrait_png(240, "rose")), upload_file("teal.png", portrait_png(240, "teal"))]
    )
    expect(photos).to_have_count(2)
    expect(status).to_be_hidden()
    token = server.token(alice_name)
    first, second = server.call("GET", "/api/users/me/photos/", token=token)
    expect(photos.first.locator("img")).to_have_attribute("src", first["thumbnails"]["512"])
    alice.get_by_role("button", name="Photo 2 of 2").click()
    alice.get_by_role("button", name="Make profile picture").click()
    expect(photos.first.locator("img")).to_have_attribute("src", second["thumbnails"]["512"])
    assert [p["id"] for p in server.call("GET", "/api/users/me/photos/", token=token)] == [second["id"], first["id"]]
    expect(alice.locator("#me-avatar img")).to_have_attribute("src", second["thumbnails"]["128"])

    # A third and a fourth; the fourth moved one place earlier.
    alice.locator("#photo-input").set_input_files(
        files=[
            upload_file("amber.png", portrait_png(240, "amber")),
            upload_file("violet.png", portrait_png(240, "violet")),
        ]
    )
    expect(photos).to_have_count(4)
    alice.get_by_role("button", name="Photo 4 of 4").click()
    alice.get_by_role("button", name="Move earlier").click()
    order = [p["url"] for p in server.call("GET", "/api/users/me/photos/", token=token)]
    assert order[0] == second["url"] and order[1] == first["url"] and order[2].endswith(".jpg")
    expect(alice.get_by_role("button", name="Photo 3 of 4")).to_have_attribute("aria-pressed", "true")

    # The location, stored coarse: others read "within N km".
    alice.get_by_role("button", name="Use my location").click()
    expect(alice.locator(".toast", has_text="Location saved")).to_be_visible()
    expect(alice.locator("#location-state")).to_contain_text("Shared, approximately")
    dismiss_toasts(alice)
    alice.locator("#panel-profile").evaluate("panel => panel.scrollTo(0, 0)")
    screenshot(alice, "screenshot-photos", tmp_path)
    with viewport(alice, PHONE):
        alice.locator("#panel-profile").evaluate("panel => panel.scrollIntoView()")
        screenshot(alice, "screenshot-photos-phone", tmp_path)

    # Bob meets her in Discover: her new first photo, and a distance that says only "within N km".
    bob = open_page(browser, server, problems, geolocation=MONTMARTRE, **geo)
    register(bob, bob_name, "Bob", "man", "woman", "1992-08-30", "Weekend climber, weekday coder.")
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")
    bob.get_by_role("button", name="Profile").click()
    bob.get_by_role("button", name="Use my location").click()
    expect(bob.locator(".toast", has_text="Location saved")).to_be_visible()
    bob.get_by_role("button", name="Discover").click()
    card = bob.locator(".candidate")
    expect(card).to_have_attribute("aria-label", "Alice, 32")
    expect(card.locator(".candidate-meta")).to_have_text(re.compile(r"^Woman · within \d+ km$"))
    expect(card.locator(".carousel-photo")).to_have_attribute("src", second["thumbnails"]["512"])
    bob_token = server.token(bob_name)
    (candidate,) = server.call("GET", "/api/discover/", token=bob_token)["results"]
    assert candidate["profile_picture"] == second["url"]
    expect(card.locator(".carousel")).to_have_attribute("data-count", str(len(candidate["photos"])))
    dismiss_toasts(bob)
    screenshot(bob, "screenshot-discover", tmp_path)
    with viewport(bob, PHONE):
        screenshot(bob, "screenshot-discover-phone", tmp_path)

    # Alice changes her first photo; once they match, Bob sees it, and all four in her profile.
    alice.get_by_role("button", name="Photo 3 of 4").click()
    alice.get_by_role("button", name="Make profile picture").click()
    expect(alice.get_by_role("button", name="Photo 1 of 4, your profile picture")).to_have_attribute(
        "aria-pressed", "true"
    )
    newest_first = server.call("GET", "/api/users/me/photos/", token=token)[0]
    assert newest_first["id"] not in (first["id"], second["id"])
    card.get_by_role("button", name="Like Alice").click()
    bob_id = server.call("GET", "/api/users/me/", token=bob_token)["id"]
    server.call("POST", "/api/likes/", {"user_id": bob_id}, token)
    say_hi(bob, "Alice", expect)
    match_moment(alice, "Bob", expect).get_by_role("button", name="Keep browsing").click()
    expect(bob.locator("#chat-avatar img")).to_have_attribute("src", newest_first["thumbnails"]["128"])
    profile_button = bob.locator("#chat-profile")
    expect(profile_button).to_have_attribute("aria-label", re.compile(r"^View Alice.s profile$"))
    profile_button.click()
    dialog = bob.locator("#profile-dialog")
    carousel = dialog.locator(".carousel")
    expect(carousel).to_have_attribute("data-count", "4")
    picture = carousel.locator(".carousel-photo")
    expect(picture).to_have_attribute("src", newest_first["thumbnails"]["512"])
    expect(dialog).to_contain_text("Sunrise hikes and good coffee.")
    # Arrows, then a swipe back.
    expect(carousel.get_by_role("button", name="Previous photo")).to_be_disabled()
    carousel.get_by_role("button", name="Next photo").click()
    expect(picture).to_have_attribute("src", second["thumbnails"]["512"])
    box = carousel.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] * 0.7
    bob.mouse.move(box["x"] + box["width"] * 0.3, y)
    bob.mouse.down()
    bob.mouse.move(box["x"] + box["width"] * 0.8, y, steps=5)
    bob.mouse.up()
    expect(picture).to_have_attribute("src", newest_first["thumbnails"]["512"])
    carousel.get_by_role("button", name="Next photo").click()
    dismiss_toasts(bob)
    screenshot(bob, "screenshot-profile", tmp_path)
    with viewport(bob, PHONE):
        screenshot(bob, "screenshot-profile-phone", tmp_path)
    dialog.get_by_role("button", name="Close").click()
    assert server.call("GET", "/api/users/me/", token=token)["profile_picture"] == newest_first["url"]

    # The profile holds six at most: the seventh is refused with the server's reason.
    alice.locator("#photo-input").set_input_files(
        files=[upload_file(f"more{n}.png", portrait_png(64, "teal")) for n in range(3)]
    )
    expect(status).to_have_text("You have 6 photos, the most a profile holds: remove one to add another.")
    expect(photos).to_have_count(6)
    expect(alice.locator(".photo-add")).to_have_count(0)
    # Removing one asks first, then frees a slot.
    alice.get_by_role("button", name="Photo 6 of 6").click()
    alice.get_by_role("button", name="Remove").click()
    alice.locator("#confirm").get_by_role("button", name="Remove").click()
    expect(photos).to_have_count(5)
    expect(alice.locator(".photo-add")).to_have_count(1)

    # Chromium logs each refused upload (400, 409) as a failed resource: those were provoked.
    assert not unexpected(problems, 400, 409), problems


# -- rate limits -----------------------------------------------------------------------------------------


# Budgets of two: a budget of one is refused at random on its first use (see the report of this change).
@pytest.mark.parametrize(
    "server_settings",
    [
        {
            "SIGNUPS_PER_IP": "2",
            "DISCOVER_PER_10_MIN": "2",
            "UPLOADS_PER_HOUR": "2",
            "MESSAGE_BURST": "2",
            "MESSAGE_RATE": "0.25",
            "PROFILE_READS_PER_MINUTE": "2",
        }
    ],
)
def test_a_rate_limit_says_slow_down_with_the_wait(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, carol_name = names()
    problems: list[str] = []

    alice = open_page(browser, server, problems)
    register(alice, alice_name, "Alice", "woman", "man", "1994-03-12", "Sunrise hikes.")
    expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
    bob = open_page(browser, server, problems)
    register(bob, bob_name, "Bob", "man", "woman", "1992-08-30", "Weekend climber.")
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")

    # Sign-up: the third account from this address within the hour.
    carol = open_page(browser, server, problems)
    register(carol, carol_name, "Carol", "woman", "man", "1990-01-01", "")
    error = carol.locator("#register-form .form-error")
    expect(error).to_have_text(SLOW_DOWN)
    expect(error).not_to_contain_text("Too many")  # never the server's own words

    # Uploads: the third photo within the hour.
    alice.get_by_role("button", name="Profile").click()
    alice.locator("#photo-input").set_input_files(
        files=[upload_file(f"{palette}.png", portrait_png(64, palette)) for palette in ("rose", "teal", "amber")]
    )
    expect(alice.locator("#photo-status")).to_have_text(SLOW_DOWN)
    expect(alice.locator("#photo-grid .photo-tile")).to_have_count(2)

    # Discover: Bob's third look within ten minutes (the second came after his like), said where the
    # card would be.
    card = bob.locator(".candidate")
    expect(card).to_have_attribute("aria-label", re.compile("^Alice"))
    card.get_by_role("button", name="Like Alice").click()
    stage = bob.locator("#discover-stage")
    expect(stage).to_contain_text("everyone for now")
    stage.get_by_role("button", name="Look again").click()
    expect(stage).to_contain_text(SLOW_DOWN)
    expect(stage.get_by_role("button", name="Look again")).to_be_disabled()
    dismiss_toasts(bob)
    with viewport(bob, PHONE):
        screenshot(bob, "screenshot-slow-down-phone", tmp_path)

    # Sending: the third message in a row; the bubble counts down, then offers a retry.
    expect(alice.locator(".toast-like")).to_be_visible()
    alice.get_by_role("button", name="Liked you").click()
    alice.locator("#likes-list .person").get_by_role("button", name="Like back").click()
    expect(alice.locator("#match-list .match")).to_have_count(1)
    say_hi(alice, "Bob", expect)
    for text in ("One", "Two", "Three"):
        alice.locator("#composer-input").fill(text)
        alice.locator("#composer-input").press("Enter")
    refused = alice.locator("#messages .message.failed", has_text="Three")
    expect(refused.locator(".slow-down")).to_have_text(SLOW_DOWN)
    expect(refused.get_by_role("button", name="Not sent. Retry")).to_be_visible(timeout=10_000)
    refused.get_by_role("button", name="Not sent. Retry").click()
    expect(alice.locator("#messages .message.own:not(.pending)", has_text="Three")).to_have_count(1)

    # Profile reads: Alice's budget spent, the profile says so instead of the server's text.
    bob_id = server.call("GET", "/api/users/me/", token=server.token(bob_name))["id"]
    alice_token = server.token(alice_name)
    for _ in range(5):
        if server.request("GET", f"/api/users/{bob_id}/", token=alice_token)[0] == 429:
            break
    alice.locator("#chat-profile").click()
    expect(alice.locator("#profile-dialog-status")).to_have_text(SLOW_DOWN)
    alice.locator("#profile-dialog").get_by_role("button", name="Close").click()

    assert not unexpected(problems, 429), problems


# -- editing and unsending -------------------------------------------------------------------------------


def test_edits_and_unsends_reach_the_other_person_live_and_after_a_reload(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, _ = names()
    problems: list[str] = []
    alice_token, bob_token = alice_and_bob(server, alice_name, bob_name)
    for token, palette in ((alice_token, "rose"), (bob_token, "teal")):
        status, _ = server.request(
            "POST", "/api/users/me/photos/", token=token, raw=portrait_png(96, palette), content_type="image/png"
        )
        assert status == 201
    server.match(alice_token, bob_token)

    alice = signed_in(browser, server, problems, alice_name, expect)
    bob = signed_in(browser, server, problems, bob_name, expect)
    open_conversation(alice, "Bob", expect)
    open_conversation(bob, "Alice", expect)
    say(bob, "Are we still on for Saturday?")
    for text in ("Yes! Lunch at noon?", "I'll bring the blue umbrella", "Meet at the north gate"):
        say(alice, text)
        expect(bob.locator("#messages .message.theirs", has_text=text)).to_have_count(1)

    # Edit: from the message's menu into the composer; Bob sees the new text live, marked edited.
    message_actions(alice, "Lunch at noon?").get_by_role("menuitem", name="Edit").click()
    expect(alice.locator("#editing-bar")).to_be_visible()
    composer = alice.locator("#composer-input")
    expect(composer).to_have_value("Yes! Lunch at noon?")
    composer.fill("Yes! Lunch at one?")
    composer.press("Enter")
    expect(alice.locator("#editing-bar")).to_be_hidden()
    edited = bob.locator("#messages .message.theirs", has_text="Lunch at one?")
    expect(edited.locator(".edited")).to_have_text("edited")
    expect(bob.locator("#messages .message", has_text="Lunch at noon?")).to_have_count(0)
    expect(alice.locator("#messages .message.own", has_text="Lunch at one?").locator(".edited")).to_be_visible()

    # Unsend: asks first; both see a placeholder, and the text is gone from Bob's page.
    message_actions(alice, "blue umbrella").get_by_role("menuitem", name="Unsend").click()
    confirm = alice.locator("#confirm")
    expect(confirm).to_contain_text("Unsend this message?")
    confirm.get_by_role("button", name="Unsend").click()
    expect(bob.locator("#messages .message.deleted")).to_have_text(re.compile("This message was unsent"))
    expect(alice.locator("#messages .message.deleted")).to_have_text(re.compile("You unsent a message"))
    expect(bob.locator("#messages", has_text="blue umbrella")).to_have_count(0)
    # Escape leaves an edit unchanged.
    message_actions(alice, "north gate").get_by_role("menuitem", name="Edit").click()
    composer.fill("something else")
    composer.press("Escape")
    expect(alice.locator("#editing-bar")).to_be_hidden()
    expect(composer).to_have_value("")

    # The screenshots: Alice's side with the menu of her last message open.
    dismiss_toasts(alice)
    menu = message_actions(alice, "north gate")
    expect(menu.get_by_role("menuitem")).to_have_count(2)
    screenshot(alice, "screenshot-message-actions", tmp_path)
    alice.keyboard.press("Escape")
    with viewport(bob, PHONE):
        dismiss_toasts(bob)
        screenshot(bob, "screenshot-unsent-phone", tmp_path)

    # Reload: still signed in (the session cookie), and history says it as it now is.
    bob.reload()
    expect(bob.locator("#match-list .match", has_text="Alice")).to_have_count(1)
    expect(bob.locator("#match-list .match .match-preview")).to_have_text("Meet at the north gate")
    open_conversation(bob, "Alice", expect)
    expect(bob.locator("#messages .message.theirs", has_text="Lunch at one?").locator(".edited")).to_be_visible()
    expect(bob.locator("#messages .message.deleted")).to_have_count(1)

    # Resume: the server restarts (closing every socket with 1001) while Bob's browser is offline, so his
    # page misses an edit and an unsend; its reconnect (`?after=`) replays them.
    bob.context.set_offline(True)
    server.stop()
    expect(bob.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    server.start()
    expect(alice.locator("#connection")).to_have_attribute("data-state", "online", timeout=20_000)
    message_actions(alice, "north gate").get_by_role("menuitem", name="Edit").click()
    composer.fill("Meet at the south gate")
    composer.press("Enter")
    message_actions(alice, "Lunch at one?").get_by_role("menuitem", name="Unsend").click()
    confirm.get_by_role("button", name="Unsend").click()
    expect(alice.locator("#messages .message.deleted")).to_have_count(2)
    time.sleep(0.5)
    expect(bob.locator("#messages .message", has_text="north gate")).to_have_count(1)
    bob.context.set_offline(False)
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online", timeout=40_000)
    expect(
        bob.locator("#messages .message.theirs", has_text="Meet at the south gate").locator(".edited")
    ).to_be_visible()
    expect(bob.locator("#messages .message.deleted")).to_have_count(2)
    expect(bob.locator("#messages", has_text="Lunch at one?")).to_have_count(0)
    # Live again after the replay.
    say(alice, "See you there")
    expect(bob.locator("#messages .message.theirs", has_text="See you there")).to_have_count(1)

    assert not problems, problems


# -- mute and notification preferences -------------------------------------------------------------------


def test_a_muted_conversation_shows_its_icon_and_makes_no_toast(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, carol_name = names()
    problems: list[str] = []
    profile = {"gender": "woman", "interested_in": ["man"], "birthdate": "1994-03-12"}
    alice_token = server.register(alice_name, display_name="Alice", **profile)
    carol_token = server.register(carol_name, display_name="Carol", **profile)
    bob_token = server.register(
        bob_name, display_name="Bob", gender="man", interested_in=["woman"], birthdate="1992-08-30"
    )
    conversation = server.match(alice_token, bob_token)
    server.match(carol_token, bob_token)
    server.call("POST", f"/api/conversations/{conversation}/messages/", {"content": "Hi Bob!"}, alice_token)

    bob = signed_in(browser, server, problems, bob_name, expect)
    alice_entry = bob.locator("#match-list .match", has_text="Alice")
    open_conversation(bob, "Alice", expect)

    # Mute from the conversation's header: the bell turns, the sidebar shows it.
    bob.get_by_role("button", name="Mute notifications").click()
    bob.get_by_role("menu").get_by_role("menuitem", name="Until I turn it back on").click()
    expect(bob.locator("#mute-label")).to_have_text("Muted")
    expect(bob.locator("#chat-muted")).to_have_text("Muted")
    expect(alice_entry).to_have_attribute("data-muted", "true")
    expect(alice_entry.locator(".muted-icon")).to_be_visible()
    expect(bob.locator("#match-list .match", has_text="Carol").locator(".muted-icon")).to_have_count(0)
    assert server.call("GET", f"/api/conversations/{conversation}/mute/", token=bob_token)["muted"] is True
    dismiss_toasts(bob)
    screenshot(bob, "screenshot-muted", tmp_path)
    with viewport(bob, PHONE):
        bob.get_by_role("button", name="Back to matches").click()
        expect(alice_entry.locator(".muted-icon")).to_be_visible()
        screenshot(bob, "screenshot-muted-phone", tmp_path)
    bob.get_by_role("button", name="Discover").click()

    # A message in the muted conversation: stored and unread, but no toast.
    muted_text = "Did you see the sunset?"
    server.call("POST", f"/api/conversations/{conversation}/messages/", {"content": muted_text}, alice_token)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = server.call("GET", "/api/conversations/", token=bob_token)
        if any(c["id"] == conversation and c["unread_count"] == 1 for c in listed):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the muted message was not stored")
    # Carol's conversation is not muted: her message toasts, and so must have come after Alice's.
    carol_conversation = next(
        c["id"] for c in server.call("GET", "/api/conversations/", token=carol_token) if c["status"] == "open"
    )
    server.call(
        "POST", f"/api/conversations/{carol_conversation}/messages/", {"content": "Hello from Carol"}, carol_token
    )
    expect(bob.locator(".toast-message", has_text="Hello from Carol")).to_be_visible()
    expect(bob.locator(".toast-message", has_text=muted_text)).to_have_count(0)

    # Unmuted, the next message toasts again.
    open_conversation(bob, "Alice", expect)
    bob.get_by_role("button", name="Muted: change or unmute").click()
    bob.get_by_role("menu").get_by_role("menuitem", name="Unmute").click()
    expect(bob.locator("#mute-label")).to_have_text("Mute")
    expect(alice_entry.locator(".muted-icon")).to_have_count(0)
    bob.get_by_role("button", name="Discover").click()
    server.call("POST", f"/api/conversations/{conversation}/messages/", {"content": "Still there?"}, alice_token)
    expect(bob.locator(".toast-message", has_text="Still there?")).to_be_visible()

    # Notification preferences: what is pushed while no page is open.
    bob.get_by_role("button", name="Settings").click()
    likes = bob.get_by_label("New likes")
    expect(likes).to_be_checked()
    expect(bob.get_by_label("Show the sender and the start of the message")).to_be_disabled()
    expect(bob.locator("#previews-note")).to_be_visible()  # PUSH_PREVIEW_CHARS is 0: no text anyway
    likes.uncheck()
    expect(bob.locator("#notification-status")).to_have_text("Saved")
    assert server.call("GET", "/api/users/me/notifications/", token=bob_token)["likes"] is False

    # Blocked people, with an unblock.
    open_conversation(bob, "Carol", expect)
    bob.locator(".chat-header").get_by_role("button", name="Block").click()
    bob.locator("#confirm").get_by_role("button", name="Block").click()
    expect(bob.locator("#match-list .match", has_text="Carol")).to_have_count(0)
    bob.get_by_role("button", name="Settings").click()
    expect(likes).not_to_be_checked()
    blocked = bob.locator("#blocked-list .blocked")
    expect(blocked).to_have_count(1)
    expect(blocked).to_contain_text(f"@{carol_name}")
    dismiss_toasts(bob)
    screenshot(bob, "screenshot-settings", tmp_path)
    with viewport(bob, PHONE):
        screenshot(bob, "screenshot-settings-phone", tmp_path)
    blocked.get_by_role("button", name=f"Unblock @{carol_name}").click()
    expect(blocked).to_have_count(0)
    expect(bob.locator("#blocked-empty")).to_be_visible()
    assert server.call("GET", "/api/blocks/", token=bob_token) == []

    assert not problems, problems


# -- reporting -------------------------------------------------------------------------------------------


def test_reports_from_a_card_and_from_a_conversation_block_at_once(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, carol_name = names()
    problems: list[str] = []
    profile = {"gender": "woman", "interested_in": ["man"], "birthdate": "1994-03-12"}
    alice_token = server.register(alice_name, display_name="Alice", **profile)
    server.register(carol_name, display_name="Carol", bio="Crypto coach. DM me.", **profile)
    bob_token = server.register(
        bob_name, display_name="Bob", gender="man", interested_in=["woman"], birthdate="1992-08-30"
    )
    conversation = server.match(alice_token, bob_token)
    scam = ["Hi! Quick favour?", "Send me 200 for the train ticket", "I pay you back tomorrow"]
    sent = [
        server.call("POST", f"/api/conversations/{conversation}/messages/", {"content": text}, alice_token)["id"]
        for text in scam
    ]

    # From a card: Carol, a discover candidate, reported as a fake profile; her card goes.
    bob = signed_in(browser, server, problems, bob_name, expect)
    card = bob.locator(".candidate")
    expect(card).to_have_attribute("aria-label", re.compile("^Carol"))
    card.get_by_role("button", name="Report Carol").click()
    dialog = bob.locator("#report-dialog")
    expect(dialog.get_by_role("heading")).to_have_text("Report Carol")
    expect(dialog.locator("#report-messages-row")).to_be_hidden()  # nothing of hers to include
    dialog.get_by_role("button", name="Report and block").click()
    expect(dialog.locator("#report-status")).to_have_text("Choose what is wrong.")
    dialog.get_by_label("Fake profile").check()
    with bob.expect_response(lambda r: r.url.endswith("/api/reports/")) as answer:
        dialog.get_by_role("button", name="Report and block").click()
    receipt = answer.value.json()
    assert answer.value.status == 201 and receipt["reason"] == "impersonation" and receipt["message_ids"] == []
    expect(bob.locator(".toast", has_text="Carol is reported")).to_be_visible()
    expect(bob.locator("#discover-stage")).to_contain_text("everyone for now")

    # From a conversation: Alice's messages go with the report; the conversation leaves the list.
    open_conversation(bob, "Alice", expect)
    bob.locator(".chat-header").get_by_role("button", name="Report").click()
    expect(dialog.locator("#report-messages-text")).to_have_text("Include their last 3 messages")
    dialog.get_by_label("Scam").check()
    dialog.get_by_label("Anything moderators should know").fill("Asked for money on the first day.")
    dismiss_toasts(bob)
    screenshot(bob, "screenshot-report", tmp_path)
    with viewport(bob, PHONE):
        screenshot(bob, "screenshot-report-phone", tmp_path)
    with bob.expect_response(lambda r: r.url.endswith("/api/reports/")) as answer:
        dialog.get_by_role("button", name="Report and block").click()
    receipt = answer.value.json()
    assert receipt["reason"] == "scam" and receipt["message_ids"] == sent
    assert receipt["note"] == "Asked for money on the first day."
    expect(bob.locator(".toast", has_text="Alice is reported")).to_be_visible()
    expect(bob.locator("#match-list .match")).to_have_count(0)
    blocked = {b["user"]["username"] for b in server.call("GET", "/api/blocks/", token=bob_token)}
    assert blocked == {alice_name, carol_name}

    # On a phone the header's actions are one menu, Report among them.
    server.register(f"dora_{carol_name[6:]}", display_name="Dora", **profile)
    dora_token = server.token(f"dora_{carol_name[6:]}")
    server.match(dora_token, bob_token)
    bob.reload()
    with viewport(bob, PHONE):
        open_conversation(bob, "Dora", expect)
        expect(bob.locator(".chat-header").get_by_role("button", name="Report")).to_have_count(0)
        bob.get_by_role("button", name="More actions").click()
        menu = bob.get_by_role("menu", name="More actions")
        expect(menu.get_by_role("menuitem")).to_have_text(["Unmatch", "Block", "Report…"])
        menu.get_by_role("menuitem", name="Report…").click()
        expect(dialog.get_by_role("heading")).to_have_text("Report Dora")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()

    assert not problems, problems


def test_my_data_downloads_and_my_account_deletes_with_the_password(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, _ = names()
    problems: list[str] = []
    alice_token, bob_token = alice_and_bob(server, alice_name, bob_name)
    conversation = server.match(alice_token, bob_token)
    server.call("POST", f"/api/conversations/{conversation}/messages/", {"content": "Hi Bob!"}, alice_token)
    bob = signed_in(browser, server, problems, bob_name, expect)
    open_conversation(bob, "Alice", expect)
    expect(bob.locator("#messages .message", has_text="Hi Bob!")).to_be_visible()

    alice = signed_in(browser, server, problems, alice_name, expect)
    alice.get_by_role("button", name="Settings").click()

    # Download my data: a ZIP the browser saves, with her account and the conversation in it.
    with alice.expect_download() as download_info:
        alice.get_by_role("button", name="Download my data").click()
    download = download_info.value
    assert download.suggested_filename == "my-data.zip"
    saved = tmp_path / "my-data.zip"
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        account = json.loads(archive.read("account.json"))
        assert account["profile"]["username"] == alice_name
        assert json.loads(archive.read(f"messages/{conversation}.json"))[0]["content"] == "Hi Bob!"
    expect(alice.locator("#export-status")).to_contain_text("Downloaded")

    # Delete my account: a wrong password is said and deletes nothing; the right one signs her out.
    alice.get_by_role("button", name="Delete my account…").click()
    dialog = alice.get_by_role("dialog", name="Delete your account?")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Your password").fill("not my password")
    dialog.get_by_role("button", name="Delete my account").click()
    expect(dialog.locator(".form-error")).to_have_text("That password is not right.")
    assert server.call("GET", "/api/users/me/", token=alice_token)["username"] == alice_name
    dialog.get_by_label("Your password").fill(PASSWORD)
    dialog.get_by_role("button", name="Delete my account").click()
    expect(alice.locator("#auth-view")).to_be_visible()
    expect(alice.locator(".toast", has_text="Account deleted")).to_be_visible()
    expect(alice.locator(".toast", has_text="session expired")).to_have_count(0)

    # Bob's open conversation closes, and signed in again he has no match with her.
    expect(bob.locator("#chat-banner")).to_have_text("This conversation is closed.")
    status, _ = server.request("POST", "/api/token/", {"username": alice_name, "password": PASSWORD})
    assert status == 401
    bob.close()
    bob = signed_in(browser, server, problems, bob_name, expect)
    expect(bob.locator("#match-list .match")).to_have_count(0)
    # The wrong password's 400 is the only failed request the page made.
    assert not unexpected(problems, 400, 401), problems


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two computed CSS colours (`rgb(...)` or `rgba(...)` over white)."""

    def luminance(colour: str) -> float:
        parts = [float(v) for v in re.findall(r"[\d.]+", colour)]
        alpha = parts[3] if len(parts) > 3 else 1.0
        channels = [c * alpha + 255 * (1 - alpha) for c in parts[:3]]
        linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_discover_moves_on_from_someone_who_blocked_you_meanwhile(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    _, bob_name, carol_name = names()
    dora_name = f"dora_{carol_name[6:]}"
    problems: list[str] = []
    profile = {"gender": "woman", "interested_in": ["man"], "birthdate": "1994-03-12"}
    tokens = {
        "Carol": server.register(carol_name, display_name="Carol", **profile),
        "Dora": server.register(dora_name, display_name="Dora", **profile),
    }
    bob_token = server.register(
        bob_name, display_name="Bob", gender="man", interested_in=["woman"], birthdate="1992-08-30"
    )
    bob_id = server.call("GET", "/api/users/me/", token=bob_token)["id"]
    bob = signed_in(browser, server, problems, bob_name, expect)
    card = bob.locator(".candidate")
    expect(card).to_have_attribute("aria-label", re.compile("^(Carol|Dora)"))
    shown = str(card.get_attribute("aria-label")).split(",")[0].split()[0]
    other = "Dora" if shown == "Carol" else "Carol"
    # Without a photo the card shows initials, readable on their coloured ground (WCAG AA: 4.5:1).
    colours = card.locator(".carousel-initials").evaluate(
        "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]"
    )
    assert contrast(*colours) >= 4.5, colours
    # The person on the card blocks Bob before he decides.
    server.call("POST", "/api/blocks/", {"user_id": bob_id}, tokens[shown])

    card.get_by_role("button", name=f"Like {shown}").click()
    expect(bob.locator(".toast", has_text="No longer available")).to_be_visible()
    expect(card).to_have_attribute("aria-label", re.compile(f"^{other}"))
    # The keyboard's place is kept: the next card's Like, then "Look again" once nobody is left.
    expect(card.get_by_role("button", name=f"Like {other}")).to_be_focused()
    card.get_by_role("button", name=f"Pass on {other}").focus()
    bob.keyboard.press("Enter")
    expect(bob.locator("#discover-stage")).to_contain_text("everyone for now")
    expect(bob.get_by_role("button", name="Look again")).to_be_focused()
    # The refused like is the only failed request.
    assert not unexpected(problems, 404), problems


# -- the sidebar follows the notifications socket ----------------------------------------------------------


def register_carol(server: DemoServer, name: str = "Carol") -> str:
    """Carol (or another `name`), a woman interested in men (so Bob's kind), registered over REST: her
    access token."""
    return server.register(
        f"{name.lower()}_{uuid.uuid4().hex[:6]}",
        display_name=name,
        gender="woman",
        interested_in=["man"],
        birthdate="1995-05-05",
    )


def test_the_sidebar_follows_matches_ended_live_and_made_while_the_socket_was_cut(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    alice_name, bob_name, _ = names()
    problems: list[str] = []
    alice_token, bob_token = alice_and_bob(server, alice_name, bob_name)
    carol_token = register_carol(server)
    server.match(alice_token, bob_token)
    bob_id = server.call("GET", "/api/users/me/", token=bob_token)["id"]
    carol_id = server.call("GET", "/api/users/me/", token=carol_token)["id"]
    server.call("POST", "/api/likes/", {"user_id": carol_id}, bob_token)

    # Bob's notifications sockets go through a route the test can cut: (page side, server side) each.
    bob = open_page(browser, server, problems)
    sockets: list[tuple[Any, Any]] = []
    bob.route_web_socket(re.compile("/ws/notifications/"), lambda ws: sockets.append((ws, ws.connect_to_server())))
    sign_in(bob, bob_name)
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")
    expect(bob.locator("#match-list .match", has_text="Alice")).to_have_count(1)

    # Alice unmatches: Bob's sidebar loses her at once, without him opening the conversation.
    [match] = listing(server.call("GET", "/api/matches/", token=alice_token))
    assert server.request("DELETE", f"/api/matches/{match['id']}/", token=alice_token)[0] == 204
    expect(bob.locator("#match-list .match", has_text="Alice")).to_have_count(0)

    # The socket is cut, and Carol likes Bob back before the page reconnects (its first retry waits about a
    # second): the reconnect resumes after the last notification the page saw, and the replay brings the match.
    page_side, server_side = sockets[-1]
    assert "after=" not in page_side.url  # nothing had been notified before the first connect
    server_side.close()
    page_side.close(code=1013, reason="cut by the test")
    server.call("POST", "/api/likes/", {"user_id": bob_id}, carol_token)
    expect(bob.locator("#match-list .match", has_text="Carol")).to_have_count(1)
    expect(match_moment(bob, "Carol", expect)).to_be_visible()
    assert len(sockets) == 2 and re.search(r"[?&]after=\d+", sockets[1][0].url), [s[0].url for s in sockets]
    assert not unexpected(problems), problems


def listing(data: Any) -> list[Any]:
    return list(data["results"] if isinstance(data, dict) else data)


# -- the session across reloads ----------------------------------------------------------------------------


def matched_pair(server: DemoServer) -> tuple[str, str, str, str, int]:
    """Alice and Bob, matched over REST: their usernames, their access tokens and their conversation."""
    alice_name, bob_name, _ = names()
    alice_token, bob_token = alice_and_bob(server, alice_name, bob_name)
    return alice_name, bob_name, alice_token, bob_token, server.match(alice_token, bob_token)


def test_a_reload_or_a_second_tab_keeps_the_session_and_signing_out_ends_it(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, _alice_token, _bob_token, _cid = matched_pair(server)
    bob = signed_in(browser, server, problems, bob_name, expect)
    # The refresh token is out of the scripts' reach: not in the page's cookies, nor in its storage.
    assert "refresh" not in bob.evaluate("document.cookie")
    assert all("." not in str(v) for v in bob.evaluate("Object.values(localStorage)")), "no token in storage"

    bob.reload()
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")
    expect(bob.locator("#auth-view")).to_be_hidden()
    expect(bob.locator("#match-list .match", has_text="Alice")).to_have_count(1)
    # Away and back through the history: still signed in.
    bob.goto("about:blank")
    bob.go_back()
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")
    # A second tab of the same browser shares the session.
    second = bob.context.new_page()
    watch(second, problems)
    second.goto(server.base)
    expect(second.locator("#connection")).to_have_attribute("data-state", "online")
    expect(second.locator("#match-list .match", has_text="Alice")).to_have_count(1)
    second.close()

    # Signing out ends the session on the server: a reload shows the sign-in form, and stays there.
    bob.locator("#sign-out").click()
    expect(bob.locator("#auth-view")).to_be_visible()
    bob.reload()
    expect(bob.locator("#signin-form")).to_be_visible()
    time.sleep(1.0)
    expect(bob.locator("#auth-view")).to_be_visible()
    assert not unexpected(problems), problems


def test_a_burst_of_messages_is_marked_read_with_a_receipt_or_two(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, alice_token, bob_token, cid = matched_pair(server)
    bob = signed_in(browser, server, problems, bob_name, expect)
    receipts: list[int] = []

    def on_socket(ws: Any) -> None:
        def sent(payload: Any) -> None:
            frame = json.loads(payload) if isinstance(payload, str) else {}
            if frame.get("type") == "read_receipt":
                receipts.append(int(frame["message_id"]))

        ws.on("framesent", sent)

    bob.on("websocket", on_socket)
    open_conversation(bob, "Alice", expect)
    ids = [
        server.call("POST", f"/api/conversations/{cid}/messages/", {"content": f"n{n}"}, alice_token)["id"]
        for n in range(40)
    ]
    expect(bob.locator("#messages .message.theirs")).to_have_count(40)
    # Read up to the newest, said once or twice rather than forty times (the frame budget is 60 at once).
    expect(bob.locator("#messages .message.theirs").last).to_contain_text("n39")
    deadline = time.monotonic() + 10
    while (not receipts or receipts[-1] != ids[-1]) and time.monotonic() < deadline:
        bob.wait_for_timeout(100)
    assert receipts and receipts[-1] == ids[-1], receipts
    assert len(receipts) <= 8, receipts
    # The server agrees: nothing unread for Bob.
    [listed] = [c for c in listing(server.call("GET", "/api/conversations/", token=bob_token)) if c["id"] == cid]
    assert listed["unread_count"] == 0, listed
    expect(bob.locator(".toast", has_text="Too many")).to_have_count(0)
    assert not unexpected(problems), problems


def test_while_the_connection_is_down_presence_is_unknown_and_coming_back_online_reconnects_at_once(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    alice_name, bob_name, _alice_token, _bob_token, _cid = matched_pair(server)
    alice = signed_in(browser, server, problems, alice_name, expect)
    bob = open_page(browser, server, problems)
    chats: list[tuple[Any, Any]] = []
    bob.route_web_socket(re.compile("/ws/conversations/"), lambda ws: chats.append((ws, ws.connect_to_server())))
    sign_in(bob, bob_name)
    open_conversation(bob, "Alice", expect)
    presence = bob.locator("#chat-presence")
    expect(presence).to_have_attribute("data-status", "online")  # Alice's page is open

    # Bob's network goes, and his chat socket with it: what he knew of Alice is no longer known.
    bob.context.set_offline(True)
    page_side, server_side = chats[-1]
    server_side.close()
    page_side.close(code=1006, reason="network gone")
    expect(presence).to_have_attribute("data-status", "unknown")
    retry = bob.get_by_role("button", name="Retry now")
    expect(retry).to_be_visible()
    # The attempts fail while offline and the waits grow; back online, the page does not wait them out.
    expect(bob.locator("#connection-text")).to_have_text(re.compile(r"Reconnecting in ([4-9]|\d\d) s"), timeout=20_000)
    bob.context.set_offline(False)
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online", timeout=2_500)
    expect(presence).to_have_attribute("data-status", "online")
    expect(retry).to_be_hidden()
    assert alice.locator("#connection").get_attribute("data-state") == "online"
    assert not unexpected(problems), problems


def test_toasts_group_a_conversations_messages_and_a_like_gives_way_to_the_match(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, alice_token, bob_token, cid = matched_pair(server)
    carol_token = register_carol(server)
    bob = signed_in(browser, server, problems, bob_name, expect)
    for text in ("one", "two", "three"):
        server.call("POST", f"/api/conversations/{cid}/messages/", {"content": text}, alice_token)
    # One toast for the conversation, counting, with the newest text; not three stacked.
    toasts = bob.locator(".toast-message")
    expect(toasts).to_have_count(1)
    expect(toasts).to_contain_text("3 new messages from Alice")
    expect(toasts).to_contain_text("three")

    bob_id = server.call("GET", "/api/users/me/", token=bob_token)["id"]
    carol_id = server.call("GET", "/api/users/me/", token=carol_token)["id"]
    server.call("POST", "/api/likes/", {"user_id": bob_id}, carol_token)
    expect(bob.locator(".toast", has_text="Carol liked you")).to_be_visible()
    server.call("POST", "/api/likes/", {"user_id": carol_id}, bob_token)
    expect(match_moment(bob, "Carol", expect)).to_be_visible()
    expect(bob.locator(".toast", has_text="liked you")).to_have_count(0)
    assert not unexpected(problems), problems


def test_a_match_is_a_moment_of_its_own_one_at_a_time_with_say_hi_and_keep_browsing(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    alice_name, bob_name, _ = names()
    alice_token, bob_token = alice_and_bob(server, alice_name, bob_name)
    carol_token, dora_token = register_carol(server), register_carol(server, "Dora")
    ids = {token: server.call("GET", "/api/users/me/", token=token)["id"] for token in (bob_token, carol_token)}
    dora_id = server.call("GET", "/api/users/me/", token=dora_token)["id"]
    for other in (ids[carol_token], dora_id):
        server.call("POST", "/api/likes/", {"user_id": other}, bob_token)
    server.call("POST", "/api/likes/", {"user_id": ids[bob_token]}, alice_token)
    bob = signed_in(browser, server, problems, bob_name, expect)
    liked_you = bob.get_by_role("button", name="Liked you")
    liked_you.focus()

    # Carol and Dora like Bob back at once: one dialog, then the next, never two on top of each other.
    for token in (carol_token, dora_token):
        server.call("POST", "/api/likes/", {"user_id": ids[bob_token]}, token)
    moment = match_moment(bob, "Carol", expect)
    expect(moment.locator("#match-moment-more")).to_have_text("1 more new match")
    expect(bob.locator("dialog[open]")).to_have_count(1)
    expect(moment.locator(".avatar-initials")).to_have_text(["B", "C"])  # both of them
    expect(bob.locator(".toast", has_text="match")).to_have_count(0)  # no toast that would vanish
    say = moment.get_by_role("button", name="Say hi")
    keep = moment.get_by_role("button", name="Keep browsing")
    # The focus starts on Say hi and stays in the dialog.
    expect(say).to_be_focused()
    bob.keyboard.press("Tab")
    expect(keep).to_be_focused()
    bob.keyboard.press("Tab")
    expect(say).to_be_focused()
    bob.keyboard.press("Shift+Tab")
    expect(keep).to_be_focused()
    settle(moment)
    screenshot(bob, "screenshot-match-moment", tmp_path)
    # Escape closes it, and Dora's takes its place; Keep browsing gives the focus back where it was.
    bob.keyboard.press("Escape")
    match_moment(bob, "Dora", expect)
    expect(moment.locator("#match-moment-more")).to_be_hidden()
    expect(say).to_be_focused()
    keep.click()
    expect(moment).to_be_hidden()
    expect(liked_you).to_be_focused()
    expect(bob.locator("#match-list .match")).to_have_count(2)

    # On a phone, the like that makes the match: Say hi opens the conversation, ready to write in.
    with viewport(bob, PHONE):
        liked_you.click()
        bob.locator("#likes-list .person", has_text="Alice").get_by_role("button", name="Like back").click()
        match_moment(bob, "Alice", expect)
        expect(bob.locator("dialog[open]")).to_have_count(1)  # the like and its notification: one
        settle(moment)
        screenshot(bob, "screenshot-match-moment-phone", tmp_path)
        say.click()
        expect(bob.locator("#chat-name")).to_have_text("Alice")
        expect(bob.locator("#composer-input")).to_be_focused()
        expect(moment).to_be_hidden()
    assert not unexpected(problems), problems


def test_on_a_phone_the_matches_are_one_tap_away_in_a_tab_bar(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, alice_token, bob_token, cid = matched_pair(server)
    carol_token = register_carol(server)
    carol_cid = server.match(carol_token, bob_token)
    for text in ("Hi Bob", "Free on Friday?"):
        server.call("POST", f"/api/conversations/{cid}/messages/", {"content": text}, alice_token)
    bob = signed_in(browser, server, problems, bob_name, expect)
    tabs = bob.get_by_role("navigation", name="Sections")
    chats = tabs.get_by_role("button", name="Chats")
    matches = bob.locator("#match-list .match")
    with viewport(bob, PHONE):
        # Discover has the screen; the matches are not under the card but behind a tab at the bottom.
        expect(bob.locator("#panel-discover")).to_be_visible()
        expect(bob.locator("#match-list")).to_be_hidden()
        expect(tabs.get_by_role("button", name="Discover")).to_have_attribute("aria-current", "page")
        bar = tabs.bounding_box()
        assert bar is not None and abs(bar["y"] + bar["height"] - PHONE["height"]) < 1, bar
        expect(chats.locator(".badge")).to_have_text("2")
        expect(chats).to_have_accessible_name(re.compile(r"^Chats 2 unread\s*$"))
        # One tap.
        chats.click()
        expect(bob).to_have_url(re.compile("#chats$"))
        expect(chats).to_have_attribute("aria-current", "page")
        expect(matches).to_have_count(2)
        expect(matches.first).to_be_in_viewport()
        dismiss_toasts(bob)
        screenshot(bob, "screenshot-chats-phone", tmp_path)
        # A conversation has the whole screen; Back returns to the list, its messages read.
        matches.filter(has_text="Alice").click()
        expect(bob.locator("#chat-name")).to_have_text("Alice")
        expect(tabs).to_be_hidden()
        bob.get_by_role("button", name="Back to matches").click()
        expect(bob).to_have_url(re.compile("#chats$"))
        expect(chats.locator(".badge")).to_be_hidden()
        server.call("POST", f"/api/conversations/{carol_cid}/messages/", {"content": "Hey"}, carol_token)
        expect(chats.locator(".badge")).to_have_text("1")
        # The keyboard: Tab from tab to tab, Enter opens one.
        tabs.get_by_role("button", name="Discover").focus()
        bob.keyboard.press("Tab")
        expect(chats).to_be_focused()
        bob.keyboard.press("Tab")
        liked = tabs.get_by_role("button", name="Liked you")
        expect(liked).to_be_focused()
        bob.keyboard.press("Enter")
        expect(bob.locator("#panel-likes")).to_be_visible()
        expect(liked).to_have_attribute("aria-current", "page")
        expect(chats).not_to_have_attribute("aria-current", "page")
        bob.go_back()
        expect(matches).to_have_count(2)

        # Unmatch and Block, in the header's menu, each ask first: Cancel leaves the match as it was.
        open_conversation(bob, "Alice", expect)
        for action in ("Unmatch", "Block"):
            bob.get_by_role("button", name="More actions").click()
            bob.get_by_role("menu", name="More actions").get_by_role("menuitem", name=action).click()
            confirm = bob.get_by_role("dialog", name=f"{action} Alice?")
            expect(confirm.get_by_role("button", name=action)).to_be_visible()
            confirm.get_by_role("button", name="Cancel").click()
            expect(confirm).to_be_hidden()
        expect(bob.locator("#composer-input")).to_be_enabled()
        assert len(listing(server.call("GET", "/api/matches/", token=bob_token))) == 2

    # 360 px wide: the top bar and the tabs fit, nothing scrolls sideways.
    with viewport(bob, {"width": 360, "height": 740}):
        bob.get_by_role("button", name="Back to matches").click()
        assert bob.evaluate("document.documentElement.scrollWidth") <= 360
        for control in (
            bob.locator("#sign-out"),
            bob.locator("#connection"),
            tabs.get_by_role("button", name="Settings"),
        ):
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, box

    # A desktop keeps its sidebar: the sections on top, the matches under them, no Chats tab.
    expect(chats).to_be_hidden()
    expect(matches).to_have_count(2)
    expect(matches.first).to_be_visible()
    nav = tabs.bounding_box()
    assert nav is not None and nav["y"] < 200, nav
    assert not unexpected(problems), problems


def test_a_refused_field_is_said_beside_it_in_words_for_a_person(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    page = open_page(browser, server, problems)
    username = f"erin_{uuid.uuid4().hex[:6]}"
    # A birth date of a fourteen-year-old passes the browser's checks; the server refuses it.
    register(page, username, "Erin", "woman", "man", "2012-04-05", "")
    form = page.locator("#register-form")
    field = form.get_by_label("Birth date")
    note = form.locator("#reg-birthdate-error")
    expect(note).to_have_text("You must be 18 or older to use Spark.")
    expect(field).to_have_attribute("aria-invalid", "true")
    # Read out with the field: its hint, then the error.
    expect(field).to_have_attribute("aria-describedby", "reg-birthdate-hint reg-birthdate-error")
    expect(field).to_be_focused()
    expect(form.locator(".form-error")).to_have_text("Check the field marked above.")
    expect(form).not_to_contain_text("you must be at least")  # not the server's words

    field.fill("1993-04-05")
    form.get_by_role("button", name="Create account").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    expect(page.locator(".field-error")).to_have_count(0)
    assert not unexpected(problems, 400), problems


def test_back_and_forward_move_between_the_apps_views_and_a_reload_returns_to_the_view(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, _alice_token, _bob_token, cid = matched_pair(server)
    bob = signed_in(browser, server, problems, bob_name, expect)
    expect(bob).to_have_url(re.compile("#discover$"))
    bob.get_by_role("button", name="Liked you").click()
    expect(bob).to_have_url(re.compile("#likes$"))
    open_conversation(bob, "Alice", expect)
    expect(bob).to_have_url(re.compile(f"#chat/{cid}$"))

    bob.go_back()
    expect(bob.locator("#panel-likes")).to_be_visible()
    expect(bob.locator("#panel-chat")).to_be_hidden()
    bob.go_back()
    expect(bob.locator("#panel-discover")).to_be_visible()
    bob.go_forward()
    expect(bob.locator("#panel-likes")).to_be_visible()
    bob.go_forward()
    expect(bob.locator("#chat-name")).to_have_text("Alice")
    expect(bob.locator("#panel-chat")).to_have_attribute("data-socket", "open")

    # A reload comes back to the conversation, still signed in.
    bob.reload()
    expect(bob.locator("#chat-name")).to_have_text("Alice")
    expect(bob.locator("#panel-chat")).to_have_attribute("data-socket", "open")
    # Signing out forgets the view: the next person starts from Discover.
    bob.locator("#sign-out").click()
    expect(bob).not_to_have_url(re.compile("#"))
    assert not unexpected(problems), problems


def test_on_a_phone_a_toast_never_covers_the_conversations_header(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    _alice_name, bob_name, _alice_token, bob_token, _cid = matched_pair(server)
    carol_token = register_carol(server)
    carol_cid = server.match(carol_token, bob_token)
    bob = signed_in(browser, server, problems, bob_name, expect)
    with viewport(bob, PHONE):
        open_conversation(bob, "Alice", expect)
        server.call("POST", f"/api/conversations/{carol_cid}/messages/", {"content": "Are you there?"}, carol_token)
        toast = bob.locator(".toast", has_text="New message from Carol")
        expect(toast).to_be_visible()
        header = bob.locator(".chat-header").bounding_box()
        shown = toast.bounding_box()
        assert header is not None and shown is not None
        assert shown["y"] >= header["y"] + header["height"], (shown, header)
        # Back and the header's menu answer a tap while the toast is up.
        bob.get_by_role("button", name="More actions").click()
        expect(bob.get_by_role("menu", name="More actions")).to_be_visible()
    assert not unexpected(problems), problems

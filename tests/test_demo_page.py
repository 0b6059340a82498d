"""The demo page in a real browser: Debian's Chromium driven by Playwright against `server.py` itself.

Two people (two browser contexts, so two separate sessions) sign up in the page, like each other, chat
both ways and see typing, read marks, presence and notification toasts. Then the server process is
restarted under them (it closes every socket with 1001) and the page must come back by itself, with
`?after=`, showing each message sent meanwhile exactly once.

The conversation screenshot in docs/ is taken along the way; it is written there only when missing or
with UPDATE_SCREENSHOTS=1, so that a test run leaves the work tree as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.demo_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS,
    TIMEOUT_MS,
    DemoServer,
    portrait_png,
    register,
    require_playwright,
    running_server,
    say,
    upload_file,
    watch,
)

pytestmark = pytest.mark.slow

SCREENSHOT = DOCS / "screenshot-conversation.png"


@pytest.fixture
def sync_api() -> Any:
    return require_playwright()


@pytest.fixture
def server(tmp_path: Path, mongo_url: str) -> Iterator[DemoServer]:
    with running_server(tmp_path / "data", mongo_url) as node:
        yield node


def test_two_people_match_chat_and_survive_a_server_restart(sync_api: Any, server: DemoServer, tmp_path: Path) -> None:
    expect = sync_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    suffix = uuid.uuid4().hex[:6]
    alice_name, bob_name = f"alice_{suffix}", f"bob_{suffix}"
    problems: list[str] = []
    refreshes: list[int] = []

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            viewport = {"width": 1280, "height": 800}
            alice_ctx = browser.new_context(viewport=viewport)
            bob_ctx = browser.new_context(viewport=viewport)
            alice = alice_ctx.new_page()
            bob = bob_ctx.new_page()
            for page in (alice, bob):
                watch(page, problems, refreshes)
                page.goto(server.base + "/")
                expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")

            # -- sign up, profile and picture --------------------------------------------------------
            register(alice, alice_name, "Alice", "woman", "man", "1994-03-12", "Sunrise hikes and good coffee.")
            expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
            expect(alice.locator("#me-name")).to_have_text("Alice")
            alice.get_by_role("button", name="Profile").click()
            alice.locator("#photo-input").set_input_files(files=[upload_file("alice.png", portrait_png())])
            expect(alice.locator(".toast", has_text="Photo added")).to_be_visible()
            expect(alice.locator("#me-avatar img")).to_have_attribute("src", re.compile(r"/media/profile_pictures/"))
            alice.get_by_label("Age from").fill("25")
            alice.get_by_label("to", exact=True).fill("45")
            alice.get_by_role("button", name="Save profile").click()
            expect(alice.locator(".toast", has_text="Profile saved")).to_be_visible()
            assert server.call("GET", "/api/users/me/", token=server.token(alice_name))["age_min"] == 25

            register(bob, bob_name, "Bob", "man", "woman", "1992-08-30", "Weekend climber, weekday coder.")
            expect(bob.locator("#connection")).to_have_attribute("data-state", "online")

            # -- discover, like, like back: a match, announced by the notifications socket ------------
            card = bob.locator(".candidate")
            expect(card).to_have_attribute("aria-label", "Alice, 32")
            card.get_by_role("button", name="Like Alice").click()
            expect(alice.locator(".toast-like", has_text="Bob liked you")).to_be_visible()
            expect(alice.locator("#likes-badge")).to_have_text("1")
            alice.get_by_role("button", name="Liked you").click()
            liked = alice.locator("#likes-list .person", has_text="Bob")
            expect(liked).to_contain_text("Weekend climber")
            liked.get_by_role("button", name="Like back").click()
            # Both are told at once, each in a dialog whose "Say hi" opens the conversation.
            for page, other in ((alice, "Bob"), (bob, "Alice")):
                moment = page.get_by_role("dialog", name="It\u2019s a match!")
                expect(moment).to_contain_text(f"You and {other} like each other.")
                moment.get_by_role("button", name="Say hi").click()

            # -- the conversation: presence, typing, messages both ways, read marks -------------------
            for page, other in ((alice, "Bob"), (bob, "Alice")):
                expect(page.locator("#chat-name")).to_have_text(other)
                # Typing before the conversation's socket is open is not sent: wait for it.
                expect(page.locator("#panel-chat")).to_have_attribute("data-socket", "open")
                expect(page.locator("#chat-presence")).to_have_attribute("data-status", "online")
                expect(page.locator("#chat-presence-text")).to_have_text("Online")
            expect(bob.locator("#chat-avatar img")).to_be_visible()  # Alice's picture

            alice.locator("#composer-input").press_sequentially("Hi Bob! I saw you like hik", delay=4)
            expect(bob.locator("#typing")).to_contain_text("Alice is typing")
            alice.locator("#composer-input").press_sequentially("ing too.", delay=4)
            alice.locator("#composer-input").press("Enter")
            first = bob.locator("#messages .message.theirs", has_text="Hi Bob! I saw you like hiking too.")
            expect(first).to_be_visible()
            expect(bob.locator("#typing")).to_have_text("")
            # Bob's page has it on screen, so it reports it read: Alice's copy turns to double ticks.
            expect(alice.locator("#messages .message.own .ticks")).to_have_attribute("data-read", "true")

            conversation = [
                (bob, "Hey Alice! Nearly every weekend. Any favourite trail?"),
                (alice, "The ridge above the lake, at sunrise. The light is unreal."),
                (bob, "Sounds perfect. Coffee first, then the ridge?"),
            ]
            for page, text in conversation:
                say(page, text)
                for viewer in (alice, bob):
                    expect(viewer.locator("#messages .message:not(.pending)", has_text=text)).to_have_count(1)
            expect(bob.locator("#messages .message.own .ticks[data-read=true]")).to_have_count(2)
            expect(alice.locator("#messages .message.own .ticks[data-read=true]")).to_have_count(2)

            # The screenshot for the README: Bob's view, Alice typing her answer.
            alice.locator("#composer-input").press_sequentially("Deal. I know a place", delay=4)
            expect(bob.locator("#typing")).to_contain_text("Alice is typing")
            for close in bob.get_by_role("button", name="Dismiss").all():
                close.click()
            expect(bob.locator(".toast")).to_have_count(0)
            bob.mouse.move(800, 600)  # no hover effect in the picture
            shot = tmp_path / "conversation.png"
            bob.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
            alice.locator("#composer-input").fill("")

            # -- unread counts and a new_message toast while elsewhere in the app ----------------------
            bob.get_by_role("button", name="Discover").click()
            say_text = "Deal. I know a place that opens at six."
            alice.locator("#composer-input").fill(say_text)
            alice.locator("#composer-input").press("Enter")
            toast = bob.locator(".toast-message", has_text=say_text)
            expect(toast).to_contain_text("New message from Alice")
            expect(bob.locator("#match-list .match", has_text="Alice").locator(".badge")).to_have_text("1")
            toast.get_by_role("button", name="Open").click()
            expect(bob.locator("#messages .message.theirs", has_text=say_text)).to_have_count(1)
            expect(bob.locator("#match-list .match .badge")).to_have_count(0)

            # -- presence: Alice leaves, Bob sees her offline; she signs in again ----------------------
            alice.close()
            expect(bob.locator("#chat-presence")).to_have_attribute("data-status", "offline")
            expect(bob.locator("#chat-presence-text")).to_have_text("Last seen just now")

            # Meanwhile Bob writes more than a page of history (over REST, as any client may).
            bob_token = server.token(bob_name)
            conversation_id = int(bob.locator("#match-list .match").first.get_attribute("data-conversation-id"))
            for n in range(1, 33):
                server.call(
                    "POST", f"/api/conversations/{conversation_id}/messages/", {"content": f"Trail note {n}"}, bob_token
                )
            expect(bob.locator("#messages .message.own", has_text="Trail note 32")).to_have_count(1)

            # She comes back in a new tab: still signed in (the session cookie), no password asked.
            alice = alice_ctx.new_page()
            watch(alice, problems, refreshes)
            alice.goto(server.base + "/")
            expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
            entry = alice.locator("#match-list .match", has_text="Bob")
            expect(entry.locator(".badge")).to_have_text("32")
            entry.click()
            expect(bob.locator("#chat-presence")).to_have_attribute("data-status", "online")
            expect(alice.locator("#messages .message.theirs", has_text="Trail note 32")).to_be_visible()
            # Only the newest page came; scrolling up loads the rest, down to the first message.
            expect(alice.locator("#messages .message", has_text="Hi Bob!")).to_have_count(0)
            expect(alice.locator("#history-state")).to_have_text("Scroll up for earlier messages")
            alice.locator("#chat-scroll").evaluate("el => { el.scrollTop = 0; }")
            expect(alice.locator("#messages .message", has_text="Hi Bob!")).to_have_count(1)
            expect(alice.locator("#history-state")).to_contain_text("This is the beginning")
            expect(bob.locator("#messages .message.own .ticks[data-read=false]")).to_have_count(0)

            # -- the server goes away under both pages and comes back ---------------------------------
            # Bob's browser is also taken offline, so that his page certainly misses what Alice sends
            # while it is away; the socket itself is closed by the server (1001, going away).
            bob_ctx.set_offline(True)
            server.stop()
            for page in (alice, bob):
                expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
            expect(bob.locator("#chat-banner")).to_contain_text("Reconnecting")
            server.start()
            expect(alice.locator("#connection")).to_have_attribute("data-state", "online", timeout=20_000)
            alice_token = server.token(alice_name)
            missed = [f"While you were away {n}" for n in (1, 2, 3)]
            for text in missed:
                server.call("POST", f"/api/conversations/{conversation_id}/messages/", {"content": text}, alice_token)
            for text in missed:
                expect(alice.locator("#messages .message.own", has_text=text)).to_have_count(1)
            expect(bob.locator("#connection")).not_to_have_attribute("data-state", "online")
            expect(bob.locator("#messages .message", has_text="While you were away")).to_have_count(0)
            bob_ctx.set_offline(False)
            # The next scheduled retry reconnects with ?after=<last id seen>: each missed message once.
            expect(bob.locator("#connection")).to_have_attribute("data-state", "online", timeout=20_000)
            for text in missed:
                expect(bob.locator("#messages .message.theirs", has_text=text)).to_have_count(1)
            expect(bob.locator("#chat-banner")).to_be_hidden()
            shown = bob.locator("#messages li.message").evaluate_all("items => items.map(li => Number(li.dataset.id))")
            assert shown == list(range(shown[0], shown[0] + len(shown))), "a message is missing or shown twice"
            # And the reconnected socket is live: typing and messages flow again.
            say(bob, "Back online. See you at six!")
            expect(alice.locator("#messages .message.theirs", has_text="See you at six")).to_have_count(1)
            expect(
                bob.locator("#messages .message.own", has_text="See you at six").locator(".ticks")
            ).to_have_attribute("data-read", "true")

            # -- block: the conversation closes for both ----------------------------------------------
            bob.locator(".chat-header").get_by_role("button", name="Block").click()
            dialog = bob.locator("#confirm")
            expect(dialog).to_contain_text("Block Alice?")
            dialog.get_by_role("button", name="Block").click()
            expect(bob.locator(".toast", has_text="Alice is blocked")).to_be_visible()
            expect(bob.locator("#match-list .match")).to_have_count(0)
            expect(alice.locator("#chat-banner")).to_have_text("This conversation is closed.")
            expect(alice.locator("#composer-input")).to_be_disabled()
            expect(alice.locator("#match-list .match")).to_have_count(0)
        finally:
            browser.close()
    assert not problems, problems
    # Access tokens lived 12 s, less than the test: the pages renewed theirs before they ran out.
    assert refreshes and set(refreshes) == {200}, refreshes

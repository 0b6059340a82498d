"""The screenshots of docs/demo.md's "Views" table, taken again: `.venv/bin/python scripts/screenshots.py`.

It needs what the demo page's tests need (the test extras, Debian's Chromium): it starts an embedded
MongoDB and `server.py` in a temporary directory, gives them a few people with photos, a match with a
conversation and a like waiting, then saves each view at desktop (1280x800) and phone (390x844) sizes,
light and some dark, as docs/screenshots/<view>-<size>[-dark].png. The images are reduced to a palette of
SHADES colours so that all of them together stay a few hundred KB.
"""

from __future__ import annotations

import io
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from services.storage.embedded import EmbeddedMongo
from tests.demo_helpers import (
    DESKTOP,
    DOCS,
    PHONE,
    DemoServer,
    dismiss_toasts,
    launched_chromium,
    portrait_png,
    require_playwright,
    running_server,
    sign_in,
)

OUT = DOCS / "screenshots"
SHADES = 96
PARIS = {"lat": 48.8566, "lon": 2.3522}
# (view, size, dark): what is taken, in this order.
SHOTS = [
    ("sign-in", "desktop", False),
    ("sign-in", "phone", False),
    ("discover", "desktop", False),
    ("discover", "phone", False),
    ("discover", "desktop", True),
    ("likes", "desktop", False),
    ("likes", "phone", False),
    ("chats", "phone", False),
    ("conversation", "desktop", False),
    ("conversation", "phone", False),
    ("conversation", "desktop", True),
    ("conversation", "phone", True),
    ("profile", "desktop", False),
    ("profile", "phone", False),
    ("settings", "desktop", False),
]


def person(server: DemoServer, name: str, gender: str, wants: str, bio: str, palette: str) -> str:
    """Someone with a profile picture and a location, registered over REST: their access token."""
    token = server.register(
        f"{name.lower()}_{uuid.uuid4().hex[:6]}",
        display_name=name,
        gender=gender,
        interested_in=[wants],
        birthdate="1994-03-12",
        bio=bio,
    )
    photo = portrait_png(240, palette)
    status, answer = server.request("POST", "/api/users/me/photos/", token=token, raw=photo, content_type="image/png")
    assert status == 201, answer
    server.call("PATCH", "/api/users/me/", {"location": PARIS}, token)
    return token


def people(server: DemoServer) -> str:
    """Bob's world: a conversation with Alice, Carol in Discover, Dana's like waiting. Bob's username."""
    alice = person(server, "Alice", "woman", "man", "Sunrise hikes and good coffee.", "rose")
    bob = person(server, "Bob", "man", "woman", "Weekend climber, weekday coder.", "teal")
    person(server, "Carol", "woman", "man", "Jazz, bikes and too many houseplants.", "amber")
    dana = person(server, "Dana", "woman", "man", "Film photography on Sundays.", "violet")
    cid = server.match(alice, bob)
    path = f"/api/conversations/{cid}/messages/"
    for sender, text in (
        (alice, "Hi Bob! I saw you climb. Fontainebleau this weekend?"),
        (bob, "Hi Alice! Yes, Saturday works. Early start?"),
        (alice, "8:00 at the station, I'll bring coffee ☕"),
        (bob, "Perfect, see you there."),
    ):
        server.call("POST", path, {"content": text}, sender)
    server.call("POST", "/api/likes/", {"user_id": server.call("GET", "/api/users/me/", token=bob)["id"]}, dana)
    return str(server.call("GET", "/api/users/me/", token=bob)["username"])


def save(page: Any, name: str) -> None:
    """The page as docs/screenshots/<name>.png, reduced to a palette."""
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    OUT.mkdir(parents=True, exist_ok=True)
    image.quantize(SHADES, method=Image.Quantize.MEDIANCUT).save(OUT / f"{name}.png", optimize=True)
    print(f"{name}.png {(OUT / f'{name}.png').stat().st_size // 1024} KB")


def show(page: Any, view: str, expect: Any) -> None:
    """Bob's page on `view`, ready to be taken."""
    chats_tab = page.locator(".nav-item[data-panel=chats]")  # shown on a phone only
    if view == "chats":
        chats_tab.click()
        expect(page.locator("#match-list .match").first).to_be_visible()
    elif view == "conversation":
        if not page.locator("#panel-chat").is_visible():
            if chats_tab.is_visible():
                chats_tab.click()
            page.locator("#match-list .match", has_text="Alice").click()
        expect(page.locator("#panel-chat")).to_have_attribute("data-socket", "open")
        expect(page.locator("#messages .message").last).to_be_visible()
    else:
        page.evaluate("view => { location.hash = view; }", view)
        expect(page.locator(f"#panel-{view}")).to_be_visible()
        ready = {"discover": ".candidate img", "likes": "#likes-list li", "profile": "#photo-grid img"}
        if view in ready:
            expect(page.locator(ready[view]).first).to_be_visible()
    dismiss_toasts(page)


def main() -> None:
    sync_api = require_playwright()
    expect = sync_api.expect
    with tempfile.TemporaryDirectory() as scratch:
        mongo = EmbeddedMongo(Path(scratch) / "mongo")
        mongo.start()
        try:
            with running_server(Path(scratch) / "server", mongo.url) as server, launched_chromium(sync_api) as browser:
                bob = people(server)
                pages: dict[tuple[str, bool], Any] = {}
                for view, size, dark in SHOTS:
                    signed_out = view == "sign-in"
                    key = (("out" if signed_out else "in") + size, dark)
                    if key not in pages:
                        context = browser.new_context(
                            viewport=DESKTOP if size == "desktop" else PHONE,
                            color_scheme="dark" if dark else "light",
                            reduced_motion="reduce",
                        )
                        page = pages[key] = context.new_page()
                        page.goto(server.base + "/")
                        if not signed_out:
                            sign_in(page, bob)
                            expect(page.locator("#connection")).to_have_attribute("data-state", "online")
                    page = pages[key]
                    if not signed_out:
                        show(page, view, expect)
                    save(page, f"{view}-{size}{'-dark' if dark else ''}")
        finally:
            mongo.stop()
    total = sum(p.stat().st_size for p in OUT.glob("*.png"))
    print(f"{len(SHOTS)} screenshots, {total // 1024} KB in {OUT}")


if __name__ == "__main__":
    main()

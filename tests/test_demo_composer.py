"""The demo page's composer and sign-up in a real browser (Chromium through Playwright, against
`server.py`): attachments (picked, uploaded with progress, refused in plain words, shown to the other
person as a preview or a file chip), the character counter at the server's message limit, a location
from the browser or a city picked by hand, an honest birth date field, and Discover taking in people who
signed up meanwhile.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import test_demo_features as features
from tests.demo_helpers import (
    PASSWORD,
    PHONE,
    DemoServer,
    portrait_png,
    register,
    screenshot,
    sign_in,
    unexpected,
    upload_file,
    viewport,
)
from tests.test_demo_features import PARIS, matched_pair, open_conversation, open_page, signed_in

# The demo tests' fixtures, under their names: a Chromium, a server with `server_settings` on top.
sync_api, server_settings, server, browser = (
    features.sync_api,
    features.server_settings,
    features.server,
    features.browser,
)

pytestmark = pytest.mark.slow

HOSTILE_NAME = '<img src=x onerror="window.pwned=1">quarterly report.pdf'
PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def chip(page: Any) -> Any:
    return page.locator("#composer-file")


def alice_in_conversation(server: DemoServer, browser: Any, problems: list[str], expect: Any) -> tuple[Any, Any]:
    """Alice and Bob matched over REST; Alice's page with the conversation open; the pair's details."""
    pair = matched_pair(server)
    alice = signed_in(browser, server, problems, pair[0], expect)
    open_conversation(alice, "Bob", expect)
    return alice, pair


def test_files_are_attached_refused_in_plain_words_and_shown_by_type(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    alice, (_, bob_name, *_) = alice_in_conversation(server, browser, problems, expect)
    bob = signed_in(browser, server, problems, bob_name, expect)
    open_conversation(bob, "Alice", expect)
    send = alice.locator("#send")

    # Refused before anything is sent: too large, a type the server does not take. Send waits meanwhile.
    with alice.expect_file_chooser() as chooser:
        alice.get_by_role("button", name="Attach a file").click()
    chooser.value.set_files(upload_file("holiday.pdf", PDF + b"\0" * (5 * 1024 * 1024), "application/pdf"))
    expect(chip(alice)).to_have_attribute("data-state", "error")
    expect(chip(alice)).to_contain_text("That file is too large: send one under 5 MB.")
    expect(send).to_be_disabled()
    alice.get_by_role("button", name="Remove holiday.pdf").click()
    expect(chip(alice)).to_be_hidden()
    expect(send).to_be_enabled()
    program = upload_file("setup.exe", b"MZ\x90\0" * 20, "application/x-msdownload")
    alice.locator("#attach-input").set_input_files(program)
    expect(chip(alice)).to_contain_text("That type of file cannot be sent")
    # Refused by the server (bytes that are not the image they claim to be): its code, said for a person.
    alice.locator("#attach-input").set_input_files(upload_file("photo.png", b"not a picture at all", "image/png"))
    expect(chip(alice)).to_have_attribute("data-state", "error")
    expect(chip(alice)).to_contain_text("That type of file cannot be sent")
    expect(alice.locator("#messages .message")).to_have_count(0)

    # A PDF with a hostile name: uploaded, then sent with a line of text.
    alice.locator("#attach-input").set_input_files(upload_file(HOSTILE_NAME, PDF, "application/pdf"))
    expect(chip(alice)).to_have_attribute("data-state", "ready")
    expect(chip(alice).locator(".file-chip-name")).to_have_text(HOSTILE_NAME)
    expect(chip(alice)).to_contain_text(f"PDF document · {len(PDF)} bytes")
    alice.locator("#composer-input").fill("The report")
    alice.locator("#composer-input").press("Enter")
    expect(chip(alice)).to_be_hidden()

    # Bob sees a chip with the name as text, the type and the size, that downloads the file.
    received = bob.locator("#messages .message.theirs", has_text="The report")
    file_chip = received.locator("a.file-chip")
    expect(file_chip.locator(".file-chip-name")).to_have_text(HOSTILE_NAME)
    expect(file_chip.locator(".file-chip-meta")).to_have_text(f"PDF document · {len(PDF)} bytes")
    assert file_chip.get_attribute("download") == HOSTILE_NAME
    assert "/media/" in (file_chip.get_attribute("href") or "")
    assert received.locator("img").count() == 0 and bob.evaluate("window.pwned") is None
    assert alice.evaluate("window.pwned") is None
    with bob.expect_download() as download:
        file_chip.click()
    assert download.value.suggested_filename.endswith("quarterly report.pdf")
    assert Path(download.value.path()).read_bytes() == PDF

    # A photo alone, no text: Alice sees its preview while it uploads; Bob an image.
    alice.locator("#attach-input").set_input_files(upload_file("beach.png", portrait_png(), "image/png"))
    expect(chip(alice).locator("img.composer-file-preview")).to_be_visible()
    expect(chip(alice)).to_have_attribute("data-state", "ready")
    send.click()
    image = bob.locator("#messages .message.theirs img.attachment-image")
    expect(image).to_have_count(1)
    expect(alice.locator("#match-list .match", has_text="Bob")).to_contain_text("You: Photo")
    expect(image).to_have_attribute("alt", "Image: beach.png")
    bob.wait_for_function("document.querySelector('#messages img.attachment-image').naturalWidth > 0")

    # A reload shows the same from history.
    bob.reload()
    open_conversation(bob, "Alice", expect)
    expect(bob.locator("#messages a.file-chip .file-chip-name")).to_have_text(HOSTILE_NAME)
    expect(bob.locator("#messages img.attachment-image")).to_have_count(1)
    bob.wait_for_function("document.querySelector('#messages img.attachment-image').naturalWidth > 0")
    screenshot(bob, "screenshot-attachments", tmp_path)
    assert not unexpected(problems, 400, 413), problems


def test_the_counter_shows_the_servers_limit_and_a_long_paste_is_kept_but_not_sent(
    sync_api: Any, server: DemoServer, browser: Any, tmp_path: Path
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    alice, (*_, bob_token, cid) = alice_in_conversation(server, browser, problems, expect)
    box, counter, send = alice.locator("#composer-input"), alice.locator("#composer-count"), alice.locator("#send")

    box.fill("x" * 3000)
    expect(counter).to_be_hidden()  # far from the limit: nothing to say
    box.fill("x" * 3500)
    expect(counter).to_have_text("3,500 / 4,000")
    # A paste over the limit stays whole in the box: the counter says by how much, and Send waits.
    box.fill("y" * 4100)
    expect(counter).to_have_text("4,100 / 4,000: 100 too many")
    assert alice.evaluate("document.querySelector('#composer-input').value.length") == 4100
    expect(send).to_be_disabled()
    expect(box).to_have_attribute("aria-invalid", "true")
    box.press("Enter")
    expect(alice.locator("#messages .message")).to_have_count(0)
    assert len(box.input_value()) == 4100
    with viewport(alice, PHONE):
        screenshot(alice, "screenshot-counter-phone", tmp_path)

    # Characters are counted as the server counts them: 4,000 emoji are 4,000 characters, and go.
    box.fill("😀" * 4000)
    expect(counter).to_have_text("4,000 / 4,000")
    expect(send).to_be_enabled()
    box.press("Enter")
    expect(alice.locator("#messages .message.own:not(.pending)")).to_have_count(1)
    expect(counter).to_be_hidden()
    history = server.call("GET", f"/api/conversations/{cid}/messages/", token=bob_token)["results"]
    assert [m["content"] for m in history] == ["😀" * 4000]
    assert not unexpected(problems), problems


# -- location and birth date at sign-up ----------------------------------------------------------------


def candidate(page: Any, name: str) -> Any:
    return page.locator("#discover-stage .candidate", has=page.locator(".candidate-name", has_text=name))


def test_a_location_from_the_browser_or_a_city_picked_by_hand_gives_distances(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    suffix = uuid.uuid4().hex[:6]

    # Alice signs up with the browser's position; Bob, without one, with a city picked by hand.
    alice = open_page(browser, server, problems, geolocation=PARIS, permissions=["geolocation"])
    register(alice, f"alice_{suffix}", "Alice", "woman", "man", "1994-03-12", "", location="here")
    expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
    # Bob's browser does not let the page know where he is: that is said beside the field, and no account
    # is made; he picks a city instead.
    bob = open_page(browser, server, problems)
    bob_form = bob.locator("#register-form")
    register(bob, f"bob_{suffix}", "Bob", "man", "woman", "1992-08-30", "", location="here")
    expect(bob_form.locator("#reg-location-error")).to_have_text(re.compile("^Location is blocked for this page"))
    expect(bob_form.get_by_label("Location")).to_be_focused()
    assert server.request("POST", "/api/token/", {"username": f"bob_{suffix}", "password": PASSWORD})[0] == 401
    expect(bob_form.get_by_label("Location").locator("option")).to_contain_text(
        ["Not now", "Use my current location", "Paris"]
    )
    bob_form.get_by_label("Location").select_option("Paris")
    bob_form.get_by_role("button", name="Create account").click()
    expect(bob.locator("#connection")).to_have_attribute("data-state", "online")

    # Each stored a coarse point near where they said, before Discover was first read: distances show.
    alice_token, bob_token = server.token(f"alice_{suffix}"), server.token(f"bob_{suffix}")
    for token in (alice_token, bob_token):
        place = server.call("GET", "/api/users/me/", token=token)["location"]
        assert abs(place["lat"] - PARIS["latitude"]) < 0.1 and abs(place["lon"] - PARIS["longitude"]) < 0.1, place
    expect(candidate(bob, "Alice").locator(".candidate-meta")).to_have_text(re.compile(r"Woman · within \d+ km"))
    alice.reload()
    expect(candidate(alice, "Bob").locator(".candidate-meta")).to_have_text(re.compile(r"Man · within \d+ km"))

    # In the profile, a city picked by hand moves her to Lyon.
    alice.get_by_role("button", name="Profile").click()
    expect(alice.locator("#location-state")).to_contain_text("Shared, approximately.")
    alice.get_by_label("Or pick a city").select_option("Lyon")
    alice.get_by_role("button", name="Use this city").click()
    expect(alice.locator(".toast", has_text="Location saved")).to_be_visible()
    place = server.call("GET", "/api/users/me/", token=alice_token)["location"]
    assert abs(place["lat"] - 45.764) < 0.1 and abs(place["lon"] - 4.8357) < 0.1, place
    # Some 400 km away, she is past Discover's default radius (100 km) for Bob now.
    bob.reload()
    expect(bob.locator("#discover-stage")).to_contain_text("everyone for now")
    assert candidate(bob, "Alice").count() == 0
    assert not unexpected(problems), problems


def test_the_birth_date_is_optional_and_the_page_says_what_leaving_it_out_does(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    suffix = uuid.uuid4().hex[:6]
    # Bob wants someone 25 to 40; Frank sets no age range.
    bob = server.register(
        f"bob_{suffix}", display_name="Bob", gender="man", interested_in=["woman"], birthdate="1992-08-30"
    )
    server.call("PATCH", "/api/users/me/", {"age_min": 25, "age_max": 40}, bob)
    server.register(
        f"frank_{suffix}", display_name="Frank", gender="man", interested_in=["woman"], birthdate="1990-01-01"
    )

    dana = open_page(browser, server, problems)
    dana.get_by_role("tab", name="Create account").click()
    field = dana.locator("#reg-birthdate")
    expect(dana.locator("label[for=reg-birthdate]")).to_have_text("Birth date (optional)")
    assert field.get_attribute("required") is None
    note = "Without it, people who set an age range do not see you, and you see only people who set none."
    expect(field).to_have_accessible_description(note)
    register(dana, f"dana_{suffix}", "Dana", "woman", "man", "", "")
    expect(dana.locator("#connection")).to_have_attribute("data-state", "online")
    assert server.call("GET", "/api/users/me/", token=server.token(f"dana_{suffix}"))["birthdate"] is None

    # As said: Frank (no age range) is shown, Bob (an age range) is not; past Frank, the page says why.
    expect(candidate(dana, "Frank")).to_be_visible()
    dana.get_by_role("button", name="Pass on Frank").click()
    expect(dana.locator("#discover-stage")).to_contain_text("everyone for now")
    expect(dana.locator("#discover-stage .no-birthdate")).to_be_visible()
    assert candidate(dana, "Bob").count() == 0
    dana.get_by_role("button", name="Profile").click()
    expect(dana.locator("#p-birthdate")).to_have_accessible_description(note)
    assert not unexpected(problems), problems


# -- Discover takes in people who signed up meanwhile ----------------------------------------------------


def is_discover_read(response: Any) -> bool:
    """A Discover read answered: the page takes people in when it has the answer, so a pass made before
    that would see the deck as it was."""
    return "/api/discover/" in response.url and response.request.method == "GET"


def test_discover_takes_in_new_sign_ups_before_the_deck_runs_out_and_after_a_while_away(
    sync_api: Any, server: DemoServer, browser: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    suffix = uuid.uuid4().hex[:6]

    def woman(name: str) -> None:
        server.register(f"{name.lower()}_{suffix}", display_name=name, gender="woman", interested_in=["man"])

    for name in ("Carol", "Cleo", "Cora"):
        woman(name)
    server.register(f"bob_{suffix}", display_name="Bob", gender="man", interested_in=["woman"])
    bob = open_page(browser, server, problems)
    bob.clock.install()
    bob.reload()
    sign_in(bob, f"bob_{suffix}")
    expect(candidate(bob, "Cora")).to_be_visible()  # newest first: Cora, Cleo, Carol

    # Dana signs up while Bob looks: she comes in before the deck runs out, right after the card shown.
    woman("Dana")
    with bob.expect_response(is_discover_read):  # the top-up: two cards are left after this pass
        bob.get_by_role("button", name="Pass on Cora").click()
    expect(candidate(bob, "Cleo")).to_be_visible()
    bob.get_by_role("button", name="Pass on Cleo").click()
    expect(candidate(bob, "Dana")).to_be_visible()

    # Erin signs up while Bob is in his profile; he comes back a few minutes later: she is there next.
    bob.get_by_role("button", name="Profile").click()
    woman("Erin")
    bob.clock.fast_forward("03:00")
    with bob.expect_response(is_discover_read):  # the top-up of a deck read minutes ago
        bob.get_by_role("button", name="Discover").click()
    expect(candidate(bob, "Dana")).to_be_visible()
    bob.get_by_role("button", name="Pass on Dana").click()
    expect(candidate(bob, "Erin")).to_be_visible()
    bob.get_by_role("button", name="Pass on Erin").click()
    expect(candidate(bob, "Carol")).to_be_visible()
    assert not unexpected(problems), problems

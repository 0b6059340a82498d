"""The demo page against axe-core (from npm, `make a11y-tools`): every view it has, signed out and signed
in, in the light and the dark colour scheme, at desktop (1280x800) and phone (390x844) sizes, has no
serious or critical accessibility violation, nor any of the rules listed in STRICT_RULES.

The views are found in the page rather than listed here: every panel a `[data-panel]` control or the
URL's hash opens, a conversation with both people's messages and one that was not sent, and the dialogs
and menus it opens. axe is injected through the DevTools protocol, so the page keeps its
Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.demo_helpers import (
    DESKTOP,
    PHONE,
    ROOT,
    DemoServer,
    dismiss_toasts,
    launched_chromium,
    require_playwright,
    running_server,
    say,
    unexpected,
)
from tests.processes import ensure_npm_tool
from tests.test_demo_features import matched_pair, open_conversation, open_page, register_carol, signed_in

pytestmark = pytest.mark.slow

AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
FAILING_IMPACTS = {"serious", "critical"}
# Rules that fail whatever impact axe gives them: the page met them once, and they are easy to lose.
STRICT_RULES = {"page-has-heading-one", "aria-allowed-role", "list", "listitem", "heading-order"}
SIZES = {"desktop": DESKTOP, "phone": PHONE}

# One axe run: the violations as plain data, with the CSS selectors of the nodes at fault.
RUN_AXE = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    targets: v.nodes.map((n) => {
      const why = (n.failureSummary || "").split("\\n").slice(1).join(" ").trim();
      return n.target.join(" ") + (why ? " — " + why : "");
    }),
  }));
}"""


@pytest.fixture(scope="module")
def sync_api() -> Any:
    return require_playwright()


@pytest.fixture(scope="module")
def axe_source() -> str:
    ensure_npm_tool("a11y-tools", AXE, "axe-core")
    return AXE.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_url: str) -> Iterator[DemoServer]:
    with running_server(tmp_path_factory.mktemp("a11y") / "data", mongo_url) as node:
        yield node


@pytest.fixture(scope="module")
def browser(sync_api: Any) -> Iterator[Any]:
    with launched_chromium(sync_api) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def bob_name(server: DemoServer) -> str:
    """Bob: matched with Alice (messages both ways), a candidate in Discover, a like waiting, one block."""
    _alice_name, bob_name, alice_token, bob_token, cid = matched_pair(server)
    for sender, text in ((alice_token, "Hi Bob! Coffee on Saturday?"), (bob_token, "Gladly, 10 at the corner?")):
        server.call("POST", f"/api/conversations/{cid}/messages/", {"content": text}, sender)
    server.call("POST", f"/api/conversations/{cid}/messages/", {"content": "Perfect, see you there."}, alice_token)
    bob_id = server.call("GET", "/api/users/me/", token=bob_token)["id"]
    register_carol(server)  # in Discover
    server.call("POST", "/api/likes/", {"user_id": bob_id}, register_carol(server))  # in Liked you
    blocked = server.call("GET", "/api/users/me/", token=register_carol(server))["id"]
    server.call("POST", "/api/blocks/", {"user_id": blocked}, bob_token)
    return bob_name


class Audit:
    """axe runs on one page; what they found that fails, each rule and node once, with the views it was in."""

    def __init__(self, page: Any, source: str) -> None:
        self.page = page
        self.source = source
        self.views: list[str] = []
        self.found: dict[tuple[str, str], list[str]] = {}

    def __call__(self, view: str) -> None:
        page = self.page
        page.mouse.move(0, 0)  # no hover state
        page.wait_for_timeout(250)  # anything that fades in is there
        if not page.evaluate("typeof window.axe === 'object'"):
            page.evaluate(self.source)  # the DevTools protocol's evaluation: not subject to the page's CSP
        self.views.append(view)
        for violation in page.evaluate(RUN_AXE):
            if violation["impact"] in FAILING_IMPACTS or violation["id"] in STRICT_RULES:
                rule = f"{violation['id']} ({violation['impact']}): {violation['help']}"
                for target in violation["targets"]:
                    self.found.setdefault((rule, target), []).append(view)

    def report(self) -> str:
        lines = [f"axe-core {self.label()} found, in the views {', '.join(self.views)}:"]
        for (rule, target), views in sorted(self.found.items()):
            lines.append(f"  {rule}\n      {target}\n      in: {', '.join(views)}")
        return "\n".join(lines)

    def label(self) -> str:
        return str(self.page.evaluate("axe.version"))


def show_panel(page: Any, name: str, expect: Any) -> None:
    """Open a view the way a person does (a visible control naming it), else through its URL; a view that
    is a panel (`#panel-<name>`) is then on screen."""
    control = page.locator(f"[data-panel='{name}']:visible")
    if control.count():
        control.first.click()
    else:
        page.evaluate("name => { location.hash = name; }", name)
    panel = page.locator(f"#panel-{name}")
    if panel.count():
        expect(panel).to_be_visible()


def close_dialog(page: Any, expect: Any) -> None:
    page.keyboard.press("Escape")
    expect(page.locator("dialog[open]")).to_have_count(0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_view_has_no_serious_accessibility_violation(
    sync_api: Any, server: DemoServer, browser: Any, axe_source: str, bob_name: str, scheme: str, size: str
) -> None:
    expect = sync_api.expect
    problems: list[str] = []

    # Signed out: the sign-in form, the sign-up form, and the sign-up form's errors beside its fields.
    page = open_page(browser, server, problems)
    page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
    page.set_viewport_size(SIZES[size])
    audit = Audit(page, axe_source)
    expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")
    audit("sign in")
    page.get_by_role("tab", name="Create account").click()
    audit("create account")
    page.locator("#register-form").get_by_role("button", name="Create account").click()
    expect(page.locator("#register-form .field-error").first).to_be_visible()
    audit("create account, refused")
    page.context.close()

    # Signed in: every panel.
    page = signed_in(browser, server, problems, bob_name, expect)
    page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
    page.set_viewport_size(SIZES[size])
    audit.page = page
    panels = page.evaluate(
        """() => [...new Set([...document.querySelectorAll("[data-panel]")].map((c) => c.dataset.panel))]"""
    )
    assert {"discover", "likes", "profile", "settings"} <= set(panels), panels
    waits = {
        "discover": ".candidate",
        "likes": "#likes-list li",
        "settings": "#blocked-list li",
        "profile": "#profile-form",
    }
    for name in panels:
        show_panel(page, name, expect)
        if name in waits:
            expect(page.locator(waits[name]).first).to_be_visible()
        audit(name)
        if name == "likes":  # someone's profile
            page.locator("#likes-list .person-photo").first.click()
            expect(page.locator("#profile-dialog")).to_be_visible()
            audit("likes, someone's profile")
            close_dialog(page, expect)
        if name == "settings":
            page.get_by_role("button", name="Delete my account…").click()
            expect(page.locator("#delete-dialog")).to_be_visible()
            audit("settings, deleting the account")
            close_dialog(page, expect)

    # A conversation: messages of both, read marks, then one the server refused ("Not sent").
    open_conversation(page, "Alice", expect)
    expect(page.locator("#messages .message.own").first).to_be_visible()
    say(page, "\u200b")  # nothing visible: refused as empty
    expect(page.get_by_role("button", name="Not sent. Retry")).to_be_visible()
    expect(page.locator(".toast", has_text="Not sent")).to_be_visible()
    audit("conversation, a message not sent, its toast")
    dismiss_toasts(page)
    audit("conversation")

    # Its menus and dialogs.
    own = page.locator("#messages .message.own").first
    own.hover()
    own.get_by_role("button", name="Message actions").click()
    expect(page.get_by_role("menu", name="Message actions")).to_be_visible()
    audit("conversation, a message's menu")
    page.keyboard.press("Escape")
    page.locator("#mute").click()
    expect(page.get_by_role("menu").first).to_be_visible()
    audit("conversation, the mute menu")
    page.keyboard.press("Escape")
    page.locator("#chat-profile").click()
    expect(page.locator("#profile-dialog")).to_be_visible()
    audit("conversation, their profile")
    close_dialog(page, expect)
    for action, dialog in (("Unmatch", "#confirm"), ("Report", "#report-dialog")):
        if size == "phone":  # the header's "⋯" menu holds them
            page.get_by_role("button", name="More actions").click()
            page.get_by_role("menuitem", name=action).click()
        else:
            page.locator(".chat-header").get_by_role("button", name=action, exact=True).click()
        expect(page.locator(dialog)).to_be_visible()
        audit(f"conversation, {action.lower()}")
        close_dialog(page, expect)
    report = audit.report()
    page.context.close()

    if audit.found:
        pytest.fail(report, pytrace=False)
    # The sign-up sent empty and the message of nothing visible are refused on purpose.
    assert not unexpected(problems, 400), problems

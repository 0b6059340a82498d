// The Settings panel: what is pushed to one's devices, and the people one blocked.
//
//   GET, PATCH /api/users/me/notifications/   {messages, matches, likes, message_previews, previews_available}
//   GET /api/blocks/                          [{user: {id, username, profile_picture}, created_at}]
//   DELETE /api/blocks/<user_id>/             unblock
//
// Preferences only change pushes (sent while no page of the user is open); the notifications socket,
// and so this page's toasts, still get everything that is not muted.

import { countDown, friendlyText, isRateLimited, retryAfterMs, stopCountDown } from "./friendly.js";
import { $, avatar, h, relativeTime } from "./ui.js";

const PREFERENCES = ["messages", "message_previews", "matches", "likes"];

/** Show `text` in a status line (or hide it); a rate limit counts down there. */
function showStatus(el, error, text = null) {
  stopCountDown(el);
  if (error && isRateLimited(error)) {
    el.hidden = false;
    countDown(el, retryAfterMs(error), { onDone: () => (el.hidden = true) });
    return;
  }
  const line = error ? friendlyText(error) : text;
  el.textContent = line || "";
  el.hidden = !line;
}

export class SettingsPanel {
  constructor(api, { notify = () => {} } = {}) {
    this.api = api;
    this.notify = notify;
    this.form = $("#notification-form");
    this.status = $("#notification-status");
    this.savedTimer = null;
    for (const name of PREFERENCES) {
      this.form.elements[name].addEventListener("change", (event) => this.save(name, event.target.checked));
    }
  }

  load() {
    return Promise.all([this.loadPreferences(), this.loadBlocked()]);
  }

  // -- notification preferences --------------------------------------------------------------------

  async loadPreferences() {
    showStatus(this.status, null);
    try {
      this.show(await this.api.get("/api/users/me/notifications/"));
    } catch (error) {
      showStatus(this.status, error);
    }
  }

  show(preferences) {
    for (const name of PREFERENCES) this.form.elements[name].checked = Boolean(preferences[name]);
    // Previews only mean something for message pushes, and only on a server that sends any text.
    const previews = this.form.elements.message_previews;
    previews.disabled = !preferences.messages || !preferences.previews_available;
    $("#previews-note").hidden = Boolean(preferences.previews_available);
  }

  async save(name, on) {
    const box = this.form.elements[name];
    clearTimeout(this.savedTimer);
    try {
      this.show(await this.api.patch("/api/users/me/notifications/", { [name]: on }));
      showStatus(this.status, null, "Saved");
      this.savedTimer = setTimeout(() => showStatus(this.status, null), 2500);
    } catch (error) {
      box.checked = !on;
      showStatus(this.status, error);
    }
  }

  // -- blocked people -------------------------------------------------------------------------------

  async loadBlocked() {
    const status = $("#blocked-status");
    showStatus(status, null);
    let blocks = [];
    try {
      const data = await this.api.get("/api/blocks/");
      blocks = Array.isArray(data) ? data : (data && data.results) || [];
    } catch (error) {
      showStatus(status, error);
    }
    this.renderBlocked(blocks);
  }

  renderBlocked(blocks) {
    $("#blocked-list").replaceChildren(
      ...blocks.map((block) =>
        h(
          "li",
          { class: "blocked", dataset: { userId: block.user.id } },
          avatar(block.user, "sm"),
          h(
            "span",
            { class: "blocked-text" },
            h("span", { class: "blocked-name" }, `@${block.user.username}`),
            h("span", { class: "hint" }, `Blocked ${relativeTime(block.created_at)}`),
          ),
          h(
            "button",
            {
              type: "button",
              class: "button button-small button-secondary",
              "aria-label": `Unblock @${block.user.username}`,
              onclick: (event) => this.unblock(block, event.currentTarget),
            },
            "Unblock",
          ),
        ),
      ),
    );
    $("#blocked-empty").hidden = blocks.length > 0;
  }

  async unblock(block, button) {
    button.disabled = true;
    try {
      await this.api.delete(`/api/blocks/${block.user.id}/`);
      this.notify({ title: `@${block.user.username} is unblocked`, kind: "info", timeoutMs: 3000 });
      await this.loadBlocked();
    } catch (error) {
      button.disabled = false;
      showStatus($("#blocked-status"), error);
    }
  }
}

// Reporting someone: POST /api/reports/ {user_id, reason, message_ids?, note?} from a dialog.
//
// A report blocks the person for the reporter at once (their conversation closes as with a block) and
// they are never told. From a conversation, the page can include their latest messages: the server copies
// those, with a few around each, into the report, so a later unsend does not erase the evidence. Only
// messages they sent and did not unsend may be named (anything else is refused).

import { countDown, friendlyText, isRateLimited, retryAfterMs, stopCountDown } from "./friendly.js";
import { $, nameOf } from "./ui.js";

export const MAX_REPORTED_MESSAGES = 10;

export class ReportDialog {
  constructor(api) {
    this.api = api;
    this.dialog = $("#report-dialog");
    this.form = $("#report-form");
    this.status = $("#report-status");
    this.current = null; // {user, messageIds, resolve}
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    $("#report-cancel").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => {
      stopCountDown(this.status);
      const current = this.current;
      this.current = null;
      if (current) current.resolve(current.receipt || null);
    });
  }

  /**
   * Ask what is wrong with `user` and report them. `messageIds`: their messages the report may include
   * (from a conversation; none from a card). Resolves with the server's receipt, or null when cancelled.
   */
  open(user, { messageIds = [] } = {}) {
    if (this.dialog.open) this.dialog.close();
    const name = nameOf(user);
    this.form.reset();
    this.say("");
    $("#report-title").textContent = `Report ${name}`;
    $("#report-intro").textContent =
      `${name} is blocked for you at once, and is not told who reported them. Moderators review every report.`;
    const ids = messageIds.slice(-MAX_REPORTED_MESSAGES);
    $("#report-messages-row").hidden = ids.length === 0;
    $("#report-messages-text").textContent =
      ids.length === 1 ? "Include their last message" : `Include their last ${ids.length} messages`;
    $("#report-submit").disabled = false;
    return new Promise((resolve) => {
      this.current = { user, messageIds: ids, resolve, receipt: null };
      this.dialog.showModal();
      this.form.querySelector("input[name=reason]").focus();
    });
  }

  say(text) {
    stopCountDown(this.status);
    this.status.textContent = text;
    this.status.hidden = !text;
  }

  async submit() {
    const current = this.current;
    if (!current) return;
    const data = new FormData(this.form);
    const reason = data.get("reason");
    if (!reason) {
      this.say("Choose what is wrong.");
      return;
    }
    const body = { user_id: current.user.id, reason };
    const note = String(data.get("note") || "").trim();
    if (note) body.note = note;
    if (data.get("include_messages") && current.messageIds.length) body.message_ids = current.messageIds;
    const button = $("#report-submit");
    button.disabled = true;
    this.say("");
    try {
      current.receipt = await this.api.post("/api/reports/", body);
      this.dialog.close();
    } catch (error) {
      button.disabled = false;
      if (isRateLimited(error)) {
        this.status.hidden = false;
        countDown(this.status, retryAfterMs(error), { onDone: () => this.say("") });
      } else if (error.code === "user_not_found") {
        this.say("This person cannot be reported any more: their account is gone.");
      } else {
        this.say(friendlyText(error, "The report could not be sent."));
      }
    }
  }
}

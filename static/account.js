// The account card of Settings: one's data, and leaving.
//
//   GET    /api/users/me/export/   a ZIP of everything the server holds about the caller (a download);
//                                  429 with Retry-After past the day's budget
//   DELETE /api/users/me/          {password} -> 204: every session and socket ends, everything is erased
//
// Deleting asks for the password in a dialog that says what goes; then the page is signed out.

import { countDown, friendlyText, isRateLimited, retryAfterMs, stopCountDown } from "./friendly.js";
import { $, clearFormError, showFormError } from "./ui.js";

/** Show `text` (or an error said for a person) in a status line; a rate limit counts down there. */
function showStatus(el, error, text = "") {
  stopCountDown(el);
  el.dataset.kind = error ? "error" : "info";
  if (error && isRateLimited(error)) {
    el.hidden = false;
    countDown(el, retryAfterMs(error), { onDone: () => (el.hidden = true) });
    return;
  }
  el.textContent = error ? friendlyText(error, "That did not work. Try again.") : text;
  el.hidden = !el.textContent;
}

/** Save `blob` as `filename` through a temporary link (the page's CSP allows blob: downloads). */
function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export class AccountPanel {
  /** `onDeleted()` runs once the server deleted the account (the page then signs out). */
  constructor(api, { notify = () => {}, onDeleted = () => {} } = {}) {
    this.api = api;
    this.notify = notify;
    this.onDeleted = onDeleted;
    this.deleting = false; // the account is being deleted: its sockets closing 4002 is expected
    this.exportButton = $("#export-data");
    this.exportStatus = $("#export-status");
    this.dialog = $("#delete-dialog");
    this.form = $("#delete-form");
    this.exportButton.addEventListener("click", () => this.download());
    $("#delete-account").addEventListener("click", () => this.askToDelete());
    $("#delete-cancel").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.delete();
    });
    this.dialog.addEventListener("close", () => {
      stopCountDown($(".form-error", this.form));
      this.form.reset();
      clearFormError(this.form);
    });
  }

  /** Settings came on screen: no stale line from last time. */
  reset() {
    if (!this.exportButton.disabled) showStatus(this.exportStatus, null);
  }

  /** GET /api/users/me/export/: the archive is built on the server, then saved by the browser. */
  async download() {
    this.exportButton.disabled = true;
    showStatus(this.exportStatus, null, "Preparing your data…");
    try {
      const { blob, filename } = await this.api.download("/api/users/me/export/");
      save(blob, filename === "download" ? "spark-data.zip" : filename);
      showStatus(this.exportStatus, null, `Downloaded ${filename === "download" ? "spark-data.zip" : filename}.`);
    } catch (error) {
      showStatus(this.exportStatus, error);
    } finally {
      this.exportButton.disabled = false;
    }
  }

  askToDelete() {
    clearFormError(this.form);
    this.dialog.showModal();
    $("#delete-password").focus();
  }

  /** DELETE /api/users/me/ {password}: a wrong password is said beside it, a rate limit counts down. */
  async delete() {
    const password = String(new FormData(this.form).get("password") || "");
    clearFormError(this.form);
    if (!password) {
      showFormError(this.form, { message: "Enter your password to confirm." });
      return;
    }
    const button = $("#delete-confirm");
    button.disabled = true;
    this.deleting = true;
    try {
      await this.api.delete("/api/users/me/", { password });
      this.dialog.close();
      this.onDeleted(); // signs out, which stops the sockets the deletion closes
      this.deleting = false;
    } catch (error) {
      this.deleting = false;
      const box = $(".form-error", this.form);
      if (isRateLimited(error)) {
        box.hidden = false;
        countDown(box, retryAfterMs(error), { onDone: () => clearFormError(this.form) });
      } else if (error.code === "wrong_password" || error.code === "invalid_credentials" || error.status === 403) {
        showFormError(this.form, { message: "That password is not right." });
      } else {
        showFormError(this.form, { message: friendlyText(error, "Your account could not be deleted. Try again.") });
      }
    } finally {
      button.disabled = false;
    }
  }
}

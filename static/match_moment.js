// "It's a match!": a full-screen modal dialog with both people's pictures (or initials), "Say hi", which
// opens the conversation with the focus in the composer, and "Keep browsing". It is shown for a
// `new_match` notification and for the like that completed a pair, once per match.
//
// Matches that come in a row wait their turn: one dialog at a time, the next once the person is done
// with the one before (after "Say hi", once the conversation is open). A dialog of the page that is
// already open (a report, a confirmation) is not covered: the moment waits until it closes.
//
// The dialog is modal (the rest of the page is inert), Tab and Shift+Tab cycle inside it, Escape closes
// it as "Keep browsing" does, and the focus goes back where it was (or to `fallbackFocus()` when that
// element went away meanwhile, e.g. the card that was liked).

import { $, $$, fillAvatar, nameOf } from "./ui.js";

export class MatchMoment {
  /**
   * `onSayHi(conversationId)`: open that conversation and put the focus in its composer (may be async).
   * `fallbackFocus()`: where the focus goes when the element that had it is no longer there.
   */
  constructor(dialog, { onSayHi, fallbackFocus }) {
    this.dialog = dialog;
    this.onSayHi = onSayHi;
    this.fallbackFocus = fallbackFocus;
    this.queue = []; // [{matchId, me, user, conversationId}] waiting their turn
    this.current = null; // the one on screen
    this.choice = null; // "hi" once Say hi was chosen for the current one
    this.returnTo = null; // what had the focus before the dialog opened
    this.waiting = null; // another dialog this one waits for
    this.sayHi = $("#match-say-hi", dialog);
    this.keep = $("#match-keep-browsing", dialog);
    this.sayHi.addEventListener("click", () => this.finish("hi"));
    this.keep.addEventListener("click", () => this.finish("keep"));
    dialog.addEventListener("close", () => this.closed());
    dialog.addEventListener("keydown", (event) => this.trapTab(event));
  }

  /** Queue the moment of a new match: {matchId, me, user, conversationId (null: no Say hi)}. */
  show(moment) {
    const known = (m) => m && m.matchId === moment.matchId;
    if (known(this.current) || this.queue.some(known)) return;
    this.queue.push(moment);
    this.renderMore();
    this.next();
  }

  /** Signed out: nothing more to show. */
  reset() {
    this.queue = [];
    this.choice = null;
    this.returnTo = null;
    if (this.dialog.open) this.dialog.close();
    this.current = null;
  }

  next() {
    if (this.current || this.queue.length === 0) return;
    const other = $$("dialog[open]").find((d) => d !== this.dialog);
    if (other) {
      if (this.waiting !== other) {
        this.waiting = other;
        other.addEventListener(
          "close",
          () => {
            this.waiting = null;
            // The dialog's own close handler may hand the focus on first (a report, a confirmation).
            setTimeout(() => this.next(), 0);
          },
          { once: true },
        );
      }
      return;
    }
    const moment = this.queue.shift();
    this.current = moment;
    this.choice = null;
    const name = nameOf(moment.user);
    fillAvatar($("#match-moment-me", this.dialog), moment.me);
    fillAvatar($("#match-moment-them", this.dialog), moment.user);
    $("#match-moment-text", this.dialog).textContent = `You and ${name} like each other.`;
    this.sayHi.hidden = moment.conversationId === null || moment.conversationId === undefined;
    this.sayHi.setAttribute("aria-label", `Say hi to ${name}`);
    this.renderMore();
    this.returnTo = document.activeElement;
    this.dialog.showModal();
    (this.sayHi.hidden ? this.keep : this.sayHi).focus();
  }

  /** "1 more new match": said while more wait their turn. */
  renderMore() {
    const line = $("#match-moment-more", this.dialog);
    const more = this.queue.length;
    line.textContent = more === 0 ? "" : more === 1 ? "1 more new match" : `${more} more new matches`;
    line.hidden = more === 0;
  }

  finish(choice) {
    this.choice = choice;
    this.dialog.close();
  }

  /** Closed by Say hi, Keep browsing or Escape. */
  async closed() {
    const moment = this.current;
    const choice = this.choice;
    this.current = null;
    this.choice = null;
    if (!moment) return;
    if (choice === "hi") {
      try {
        await this.onSayHi(moment.conversationId);
      } finally {
        this.next();
      }
      return;
    }
    this.restoreFocus();
    this.next();
  }

  restoreFocus() {
    const target = this.returnTo;
    this.returnTo = null;
    const usable =
      target && target !== document.body && target.isConnected && !target.disabled && target.getClientRects().length > 0;
    if (usable) target.focus();
    else this.fallbackFocus();
  }

  /** Tab past the last control comes back to the first, and Shift+Tab the other way. */
  trapTab(event) {
    if (event.key !== "Tab") return;
    const controls = $$("button", this.dialog).filter((b) => !b.hidden && !b.disabled);
    if (controls.length === 0) return;
    const first = controls[0];
    const last = controls[controls.length - 1];
    const at = document.activeElement;
    if (event.shiftKey && (at === first || !this.dialog.contains(at))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (at === last || !this.dialog.contains(at))) {
      event.preventDefault();
      first.focus();
    }
  }
}

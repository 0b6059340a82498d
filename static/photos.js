// Profile photos: the carousel that shows someone's photos (discover cards, profiles), and the editor of
// one's own (add, remove, reorder; the first is the profile picture).
//
//   GET    /api/users/me/photos/        [{id, url, thumbnails: {"128": url, "512": url}, ...}], in order
//   POST   /api/users/me/photos/        the image's bytes -> the new photo, last
//   PATCH  /api/users/me/photos/        {order: [id, ...]} -> the list in its new order
//   DELETE /api/users/me/photos/<id>/   204
//
// Other people's photos come as URLs only (`photos` of a public profile or a candidate); their thumbnails
// sit beside them under a documented name (`x.jpg` -> `x.512.jpg`), and the full image stands in for a
// thumbnail that is not there (an image stored before thumbnails were made).

import { countDown, isRateLimited, photoErrorText, retryAfterMs, stopCountDown } from "./friendly.js";
import { $, confirmDialog, fillAvatar, h, imageWithFallback, nameOf, thumbnailOf } from "./ui.js";

export const MAX_PHOTOS = 6; // MAX_PROFILE_PHOTOS's default; the server's 409 says so when it is lower
const MAX_UPLOAD_BYTES = 5 * 1024 * 1024; // MAX_UPLOAD_BYTES's default: refused here before it is sent
const SWIPE_MIN_PX = 40;

// =====================================================================================================
// The carousel
// =====================================================================================================

/**
 * Someone's photos, one at a time: arrows, a swipe, or the arrow keys go from one to the next, and the
 * bars on top say which one shows. Without photos: their initials on their colour.
 */
export function photoCarousel(user, { className = "" } = {}) {
  const urls = user.photos && user.photos.length ? user.photos : user.profile_picture ? [user.profile_picture] : [];
  const name = nameOf(user);
  if (urls.length === 0) {
    return fillAvatar(h("div", { class: `carousel carousel-initials ${className}`, "aria-hidden": "true" }), user);
  }
  let index = 0;
  const img = imageWithFallback({ class: "carousel-photo", alt: "" }, thumbnailOf(urls[0]), urls[0]);
  const spoken = h("p", { class: "visually-hidden", "aria-live": "polite" });
  const bars = urls.map(() => h("span", { class: "carousel-bar" }));
  const previous = h("button", { type: "button", class: "carousel-nav carousel-prev", "aria-label": "Previous photo" }, "‹");
  const next = h("button", { type: "button", class: "carousel-nav carousel-next", "aria-label": "Next photo" }, "›");
  const root = h(
    "div",
    {
      class: `carousel ${className}`,
      role: "group",
      "aria-roledescription": "carousel",
      "aria-label": `Photos of ${name}`,
      tabindex: urls.length > 1 ? "0" : null,
      dataset: { count: urls.length },
    },
    img,
    urls.length > 1 ? [h("div", { class: "carousel-bars", "aria-hidden": "true" }, bars), previous, next] : null,
    spoken,
  );

  const show = (to, { announce = true } = {}) => {
    index = Math.max(0, Math.min(urls.length - 1, to));
    img.dataset.full = urls[index];
    img.setAttribute("src", thumbnailOf(urls[index]));
    img.alt = `${name}, photo ${index + 1} of ${urls.length}`;
    root.dataset.index = String(index);
    bars.forEach((bar, i) => bar.classList.toggle("on", i === index));
    previous.disabled = index === 0;
    next.disabled = index === urls.length - 1;
    if (announce && urls.length > 1) spoken.textContent = `Photo ${index + 1} of ${urls.length}`;
    // The next one is probably wanted soon: have it in the cache by then.
    if (index + 1 < urls.length) new Image().src = thumbnailOf(urls[index + 1]);
  };
  previous.addEventListener("click", () => show(index - 1));
  next.addEventListener("click", () => show(index + 1));
  root.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") show(index - 1);
    else if (event.key === "ArrowRight") show(index + 1);
    else return;
    event.preventDefault();
  });
  // A horizontal swipe (finger, pen or mouse drag) goes one photo that way; `touch-action: pan-y` in
  // the CSS leaves vertical scrolling to the browser.
  let startX = null;
  root.addEventListener("pointerdown", (event) => {
    if (event.target.closest("button")) return;
    startX = event.clientX;
  });
  root.addEventListener("pointerup", (event) => {
    if (startX === null) return;
    const dx = event.clientX - startX;
    startX = null;
    if (Math.abs(dx) >= SWIPE_MIN_PX) show(index + (dx < 0 ? 1 : -1));
  });
  root.addEventListener("pointercancel", () => (startX = null));
  show(0, { announce: false });
  return root;
}

// =====================================================================================================
// The editor of one's own photos
// =====================================================================================================

export class PhotoEditor {
  /**
   * `root` holds #photo-grid, #photo-input, #photo-actions and #photo-status. `onChange(photos)` runs
   * after every change the server accepted, with the list as it now is.
   */
  constructor(api, root, { onChange = () => {}, notify = () => {} } = {}) {
    this.api = api;
    this.onChange = onChange;
    this.notify = notify;
    this.photos = [];
    this.selected = null; // id of the photo the action bar acts on
    this.busy = false;
    this.grid = $("#photo-grid", root);
    this.input = $("#photo-input", root);
    this.status = $("#photo-status", root);
    this.actions = $("#photo-actions", root);
    this.count = $("#photo-count", root);
    this.input.addEventListener("change", () => {
      const files = [...this.input.files];
      this.input.value = "";
      if (files.length) this.upload(files);
    });
    // Escape on a photo or its actions lets go of the selection.
    root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.selected !== null && !event.defaultPrevented) this.select(null);
    });
    for (const button of this.actions.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => this.act(button.dataset.action));
    }
  }

  async load() {
    this.say("");
    try {
      this.photos = await this.api.get("/api/users/me/photos/");
    } catch (error) {
      this.fail(error);
    }
    if (!this.photos.some((p) => p.id === this.selected)) this.selected = null;
    this.render();
  }

  // -- showing ------------------------------------------------------------------------------------

  render() {
    const slots = [];
    this.photos.forEach((photo, i) => {
      const thumbs = photo.thumbnails || {};
      const thumb = thumbs["512"] || thumbs["128"] || photo.url;
      const selected = photo.id === this.selected;
      slots.push(
        h(
          "li",
          { class: `photo-slot${i === 0 ? " photo-first" : ""}`, dataset: { photoId: photo.id } },
          h(
            "button",
            {
              type: "button",
              class: "photo-tile",
              "aria-pressed": String(selected),
              "aria-label": `Photo ${i + 1} of ${this.photos.length}${i === 0 ? ", your profile picture" : ""}`,
              onclick: () => this.select(photo.id),
            },
            imageWithFallback({ alt: "" }, thumb, photo.url),
            i === 0 ? h("span", { class: "photo-badge", "aria-hidden": "true" }, "Profile picture") : null,
          ),
        ),
      );
    });
    for (let i = this.photos.length; i < MAX_PHOTOS; i += 1) {
      if (i === this.photos.length) {
        slots.push(
          h(
            "li",
            { class: `photo-slot photo-empty${i === 0 ? " photo-first" : ""}` },
            h(
              "button",
              { type: "button", class: "photo-add", disabled: this.busy, onclick: () => this.input.click() },
              h("span", { class: "photo-add-plus", "aria-hidden": "true" }, this.busy ? "…" : "+"),
              h("span", { class: "photo-add-text" }, this.busy ? "Uploading…" : "Add a photo"),
            ),
          ),
        );
      } else {
        slots.push(h("li", { class: "photo-slot photo-empty", "aria-hidden": "true" }));
      }
    }
    this.grid.replaceChildren(...slots);
    this.count.textContent = `${this.photos.length} of ${MAX_PHOTOS}`;
    this.renderActions();
  }

  renderActions() {
    const at = this.photos.findIndex((p) => p.id === this.selected);
    this.actions.hidden = at < 0;
    const buttons = Object.fromEntries([...this.actions.querySelectorAll("button")].map((b) => [b.dataset.action, b]));
    buttons.first.disabled = this.busy || at <= 0;
    buttons.earlier.disabled = this.busy || at <= 0;
    buttons.later.disabled = this.busy || at < 0 || at === this.photos.length - 1;
    buttons.remove.disabled = this.busy || at < 0;
    this.actions.setAttribute("aria-label", at < 0 ? "Selected photo" : `Photo ${at + 1}`);
  }

  /** Select a photo for the action bar (null: none); focus stays on its tile across the re-render. */
  select(id) {
    const focused = id ?? this.selected;
    this.selected = id;
    this.render();
    if (focused !== null) this.grid.querySelector(`li[data-photo-id="${focused}"] .photo-tile`)?.focus();
  }

  /** A line next to the control: an error (`role=alert`) or nothing. */
  say(text) {
    stopCountDown(this.status);
    this.status.textContent = text;
    this.status.hidden = !text;
  }

  fail(error) {
    if (isRateLimited(error)) {
      this.status.hidden = false;
      countDown(this.status, retryAfterMs(error), { onDone: () => this.say("") });
    } else {
      this.say(photoErrorText(error));
    }
  }

  // -- changes ------------------------------------------------------------------------------------

  async upload(files) {
    this.say("");
    this.busy = true;
    this.render();
    try {
      for (const file of files) {
        if (file.size > MAX_UPLOAD_BYTES) {
          this.say(photoErrorText({ code: "file_too_large" }));
          return;
        }
        const photo = await this.api.postBytes("/api/users/me/photos/", file);
        this.photos = [...this.photos, photo];
        this.render();
        this.notify({ title: "Photo added", kind: "info", timeoutMs: 3000 });
      }
    } catch (error) {
      this.fail(error);
      if (error.code === "photos_changed") await this.load();
    } finally {
      this.busy = false;
      this.render();
      this.onChange(this.photos);
    }
  }

  async act(action) {
    const at = this.photos.findIndex((p) => p.id === this.selected);
    if (at < 0 || this.busy) return;
    const photo = this.photos[at];
    if (action === "remove") {
      await this.remove(photo, at);
      return;
    }
    const order = this.photos.map((p) => p.id);
    order.splice(at, 1);
    const to = { first: 0, earlier: at - 1, later: at + 1 }[action];
    order.splice(to, 0, photo.id);
    await this.change(() => this.api.patch("/api/users/me/photos/", { order }));
    const focusAction = this.actions.querySelector(`button[data-action="${action}"]`);
    if (focusAction && !focusAction.disabled) focusAction.focus();
  }

  async remove(photo, at) {
    const ok = await confirmDialog({
      title: "Remove this photo?",
      text:
        at === 0 && this.photos.length > 1
          ? "It is deleted for good, and your next photo becomes your profile picture."
          : "It is deleted for good.",
      confirmLabel: "Remove",
    });
    if (!ok) return;
    const removed = await this.change(async () => {
      await this.api.delete(`/api/users/me/photos/${photo.id}/`);
      return this.photos.filter((p) => p.id !== photo.id);
    });
    if (removed) {
      this.selected = null;
      this.render();
      this.notify({ title: "Photo removed", kind: "info", timeoutMs: 3000 });
    }
  }

  /** Run one change (`work` answers the new list); true when the server took it. */
  async change(work) {
    this.say("");
    this.busy = true;
    this.renderActions();
    try {
      this.photos = await work();
      return true;
    } catch (error) {
      this.fail(error);
      if (error.code === "photos_changed" || error.code === "photo_not_found") await this.load();
      return false;
    } finally {
      this.busy = false;
      this.render();
      this.onChange(this.photos);
    }
  }
}

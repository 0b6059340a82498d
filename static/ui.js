// Small DOM helpers. Text from the server only ever reaches the page through textContent and attribute
// setters, never through innerHTML, so a message or a bio cannot inject markup.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/** h("li", {class: "x", dataset: {id: 3}, onclick}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * The thumbnail with longest side `side` beside an uploaded image: `…/x.jpg` -> `…/x.512.jpg` (the
 * server writes one of each IMAGE_THUMBNAIL_SIDES beside every image it stores, 128 and 512 by default).
 */
export function thumbnailOf(url, side = 512) {
  return url.replace(/(\/[^/.]+)(\.[A-Za-z0-9]+)$/, `$1.${side}$2`);
}

/** An <img> of `thumb` that shows `full` instead when the thumbnail is not there (an older image). */
export function imageWithFallback(attrs, thumb, full) {
  const img = h("img", { ...attrs, src: thumb, decoding: "async", draggable: "false" });
  img.dataset.full = full;
  img.addEventListener("error", () => {
    if (img.getAttribute("src") !== img.dataset.full) img.setAttribute("src", img.dataset.full);
  });
  return img;
}

/** The name to show for a user object of any shape the API returns. */
export function nameOf(user) {
  if (!user) return "Someone";
  return user.display_name || user.username || "Someone";
}

/**
 * Fill an `.avatar` element: the picture if there is one, else initials on a colour picked from the
 * user id (a fixed set of classes: the page's CSP allows no inline styles).
 */
export function fillAvatar(el, user) {
  el.replaceChildren();
  el.className = el.className.replace(/\bhue-\d\b/g, "").trim();
  const picture = user && user.profile_picture;
  if (picture) {
    el.append(imageWithFallback({ alt: "", loading: "lazy" }, thumbnailOf(picture, 128), picture));
  } else {
    const initials = nameOf(user)
      .split(/[\s._-]+/)
      .filter(Boolean)
      .slice(0, 2)
      .map((part) => part[0].toUpperCase())
      .join("");
    el.append(h("span", { class: "avatar-initials" }, initials || "?"));
    el.classList.add(`hue-${Math.abs(Number((user && user.id) || 0)) % 8}`);
  }
  return el;
}

export function avatar(user, size = "md") {
  return fillAvatar(h("span", { class: `avatar avatar-${size}`, "aria-hidden": "true" }), user);
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });

export function clockTime(iso) {
  return iso ? timeFormat.format(new Date(iso)) : "";
}

/** "just now", "5 min ago", "today at 14:05", "yesterday at 09:12", "on 3 May". */
export function relativeTime(iso) {
  if (!iso) return "";
  const then = new Date(iso);
  const seconds = Math.max(0, (Date.now() - then.getTime()) / 1000);
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (then.toDateString() === today.toDateString()) return `today at ${timeFormat.format(then)}`;
  if (then.toDateString() === yesterday.toDateString()) return `yesterday at ${timeFormat.format(then)}`;
  return `on ${dayFormat.format(then)}`;
}

/** A short time for lists: "14:05" today, "3 May" before. */
export function shortTime(iso) {
  if (!iso) return "";
  const then = new Date(iso);
  return then.toDateString() === new Date().toDateString() ? timeFormat.format(then) : dayFormat.format(then);
}

// -- toasts --------------------------------------------------------------------------------------------

/**
 * A toast in the polite live region: {title, text, kind: "info"|"like"|"match"|"message"|"error",
 * action: {label, run}}. It leaves by itself, later when the pointer or focus is on it.
 */
/**
 * A toast. With a `key`, it replaces the toast of that key still on screen (a conversation's messages
 * make one toast that counts them, not a stack); `dismissToast(key)` takes it away.
 */
export function toast({ title, text = "", kind = "info", action = null, timeoutMs = 6000, key = null }) {
  const region = $("#toasts");
  if (key !== null) dismissToast(key, { now: true });
  const close = () => {
    item.classList.add("leaving");
    setTimeout(() => item.remove(), 200);
  };
  const item = h(
    "div",
    { class: `toast toast-${kind}`, dataset: key !== null ? { kind, key } : { kind } },
    h("div", { class: "toast-body" }, h("strong", { class: "toast-title" }, title), text ? h("span", { class: "toast-text" }, text) : null),
    action
      ? h("button", { type: "button", class: "button button-small toast-action", onclick: () => { close(); action.run(); } }, action.label)
      : null,
    h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: close }, "×"),
  );
  region.append(item);
  let timer = setTimeout(close, timeoutMs);
  const hold = () => clearTimeout(timer);
  const release = () => {
    clearTimeout(timer);
    timer = setTimeout(close, 2500);
  };
  item.addEventListener("pointerenter", hold);
  item.addEventListener("focusin", hold);
  item.addEventListener("pointerleave", release);
  item.addEventListener("focusout", release);
  // Keep the stack short.
  while (region.children.length > 4) region.firstElementChild.remove();
  return item;
}

/** Take the toast of `key` off the screen, if it is there (`now`: without the leaving animation). */
export function dismissToast(key, { now = false } = {}) {
  for (const item of $$("#toasts .toast")) {
    if (item.dataset.key === key) {
      if (now) item.remove();
      else {
        item.classList.add("leaving");
        setTimeout(() => item.remove(), 200);
      }
    }
  }
}

/** Whether the toast of `key` is on screen. */
export function toastShown(key) {
  return $$("#toasts .toast").some((item) => item.dataset.key === key && !item.classList.contains("leaving"));
}

/** A modal yes/no question in the page's <dialog>; resolves true on confirm. */
export function confirmDialog({ title, text, confirmLabel }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

/** Show per-field errors of a 400 (`error.fields`) next to the inputs, and the message under the form. */
export function showFormError(form, error) {
  clearFormError(form);
  const box = $(".form-error", form);
  const fields = (error && error.fields) || {};
  const unplaced = [];
  for (const [name, message] of Object.entries(fields)) {
    const input = form.elements.namedItem(name.split(".")[0]);
    const text = friendlyFieldText(String(message));
    if (input && input.setAttribute && input.id) {
      // Beside the field, and read out with it.
      const note = h("p", { class: "field-error", id: `${input.id}-error` }, text);
      (input.closest("label") || input).after(note);
      input.setAttribute("aria-invalid", "true");
      // Read out after the field's own hint, which stays.
      const hint = input.getAttribute("aria-describedby");
      if (hint) input.dataset.hint = hint;
      input.setAttribute("aria-describedby", hint ? `${hint} ${note.id}` : note.id);
    } else {
      unplaced.push(`${name.replace(/_/g, " ")}: ${text}`);
    }
  }
  const placed = Object.keys(fields).length - unplaced.length;
  if (unplaced.length) box.textContent = unplaced.join(" · ");
  else if (placed) box.textContent = placed === 1 ? "Check the field marked above." : "Check the fields marked above.";
  else box.textContent = (error && error.message) || "Something went wrong.";
  box.hidden = false;
  const first = $("[aria-invalid=true]", form);
  if (first) first.focus();
}

/** The server's per-field texts (pydantic's wording) said for a person. */
export function friendlyFieldText(message) {
  const required = /^(Field required|String should have at least 1 character)/.exec(message);
  if (required) return "This is required.";
  const atLeast = /at least (\d+) character/.exec(message);
  if (atLeast) return `Too short: at least ${atLeast[1]} characters.`;
  const atMost = /at most (\d+) character/.exec(message);
  if (atMost) return `Too long: at most ${atMost[1]} characters.`;
  if (/needs a visible character/.test(message)) return "Use at least one visible character.";
  const age = /you must be at least (\d+)/.exec(message);
  if (age) return `You must be ${age[1]} or older to use Spark.`;
  if (/valid date/.test(message)) return "Enter a date.";
  if (/^Input should be/.test(message)) return "Choose one of the options.";
  return message;
}

export function clearFormError(form) {
  const box = $(".form-error", form);
  box.hidden = true;
  box.textContent = "";
  for (const el of $$("[aria-invalid]", form)) {
    el.removeAttribute("aria-invalid");
    if (el.dataset.hint) el.setAttribute("aria-describedby", el.dataset.hint);
    else el.removeAttribute("aria-describedby");
    delete el.dataset.hint;
  }
  for (const note of $$(".field-error", form)) note.remove();
}

// -- menus ---------------------------------------------------------------------------------------------

let openedMenu = null; // {menu, button, cleanup}: one menu at a time

/**
 * A small menu of actions beside `button` (whose parent is positioned: `.menu-anchor`): items
 * [{label, run, danger}]. It closes on a choice, on Escape (focus goes back to the button), on a click
 * elsewhere and when focus leaves it; the arrow keys, Home and End move between its items.
 */
export function openMenu(button, items, { label = "", placeAbove = false } = {}) {
  closeMenu();
  const menu = h("div", { class: `menu${placeAbove ? " menu-up" : ""}`, role: "menu", "aria-label": label || null });
  for (const item of items) {
    menu.append(
      h(
        "button",
        {
          type: "button",
          role: "menuitem",
          tabindex: "-1",
          class: `menu-item${item.danger ? " menu-danger" : ""}`,
          onclick: () => {
            closeMenu({ refocus: true });
            item.run();
          },
        },
        item.label,
      ),
    );
  }
  const entries = () => $$(".menu-item", menu);
  const onKey = (event) => {
    const list = entries();
    const at = list.indexOf(document.activeElement);
    const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: list.length - 1 };
    if (event.key === "Escape") {
      event.preventDefault();
      closeMenu({ refocus: true });
    } else if (event.key in moves) {
      event.preventDefault();
      list[(moves[event.key] + list.length) % list.length].focus();
    } else if (event.key === "Tab") {
      closeMenu();
    }
  };
  const onPointer = (event) => {
    if (!menu.contains(event.target) && !button.contains(event.target)) closeMenu();
  };
  menu.addEventListener("keydown", onKey);
  document.addEventListener("pointerdown", onPointer, true);
  button.setAttribute("aria-expanded", "true");
  button.after(menu);
  openedMenu = {
    menu,
    button,
    cleanup: () => document.removeEventListener("pointerdown", onPointer, true),
  };
  entries()[0]?.focus();
  return menu;
}

/** Close the open menu, if any (`refocus`: give focus back to the button that opened it). */
export function closeMenu({ refocus = false } = {}) {
  if (!openedMenu) return;
  const { menu, button, cleanup } = openedMenu;
  openedMenu = null;
  cleanup();
  menu.remove();
  button.setAttribute("aria-expanded", "false");
  if (refocus && button.isConnected) button.focus();
}

/** Whether a menu opened from `button` is showing. */
export function menuOpenFor(button) {
  return openedMenu !== null && openedMenu.button === button;
}

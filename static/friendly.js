// What the page says when the server refuses something: a sentence for a person, chosen by the error's
// `code`, never the raw text of a 429. A rate limit always reads "Slow down — try again in N s", from the
// answer's `Retry-After` header (REST) or the frame's `retry_after_ms` (WebSocket), and counts down where
// it stays on screen.

/** A refusal for going too fast: a REST 429, or an `error` frame with code `rate_limited`. */
export function isRateLimited(error) {
  return Boolean(error) && (error.status === 429 || error.code === "rate_limited");
}

/** Milliseconds to wait before trying again: `retryAfterMs` of an ApiError, `retry_after_ms` of a frame. */
export function retryAfterMs(error) {
  const ms = error ? (error.retryAfterMs ?? error.retry_after_ms) : null;
  return typeof ms === "number" && ms > 0 ? ms : 1000;
}

/** "Slow down — try again in 5 s" (in minutes past a minute and a half: "in 10 min"). */
export function slowDownText(ms) {
  const seconds = Math.max(1, Math.ceil(ms / 1000));
  // A no-break space keeps the number with its unit when the line wraps.
  const wait = seconds < 90 ? `${seconds}\u00a0s` : `${Math.ceil(seconds / 60)}\u00a0min`;
  return `Slow down — try again in ${wait}`;
}

// Cancel functions of the countdowns running in elements, so that a new one replaces the old.
const countdowns = new WeakMap();

/**
 * Write `slowDownText` into `el` and keep it current once a second until the wait is over; then call
 * `onDone` (which usually re-enables what was refused). Returns a function that stops it early.
 */
export function countDown(el, ms, { onDone = () => {}, text = slowDownText } = {}) {
  stopCountDown(el);
  const until = Date.now() + ms;
  const tick = () => {
    const left = until - Date.now();
    if (left <= 0) {
      stopCountDown(el);
      onDone();
      return;
    }
    const line = text(left);
    if (el.textContent !== line) el.textContent = line;
  };
  const timer = setInterval(tick, 250);
  countdowns.set(el, () => clearInterval(timer));
  tick();
  return () => stopCountDown(el);
}

export function stopCountDown(el) {
  const stop = countdowns.get(el);
  if (stop) {
    stop();
    countdowns.delete(el);
  }
}

// Image uploads (photos, the picture): the codes of handlers/photos.py, said for a person.
const PHOTO_ERRORS = {
  body_too_large: "That photo is too large: pick one under 5 MB.",
  file_too_large: "That photo is too large: pick one under 5 MB.",
  storage_quota_exceeded: "Your storage is full: remove a photo (or attachments you sent) first.",
  unsupported_media_type: "That type of file is not supported: use a JPEG, PNG or WebP photo.",
  invalid_image: "That file is not a readable image: it may be damaged, or not the image it says it is.",
  image_too_many_pixels: "That image has too many pixels: use a smaller one (at most 25 megapixels).",
  empty_file: "That file is empty.",
  photo_limit_reached: "You have 6 photos, the most a profile holds: remove one to add another.",
  photos_changed: "Your photos changed in another window meanwhile: try again.",
  photo_not_found: "That photo is gone already.",
};

// Editing and unsending messages (README, "Editing and unsending").
const MESSAGE_ERRORS = {
  edit_window_closed: "Too late to edit: a message can be changed for 15 minutes after it is sent.",
  message_deleted: "That message was unsent already.",
  message_not_found: "That message is not in this conversation any more.",
  not_your_message: "Only the person who sent a message can change it.",
  empty_message: "A message cannot be empty: unsend it instead.",
  message_too_long: "That is too long for one message.",
  conversation_not_found: "This conversation is closed.",
};

const GENERAL_ERRORS = {
  network: "The server cannot be reached. Check your connection.",
  unavailable: "The server is busy for a moment. Try again shortly.",
};

/** The sentence for `error` (an ApiError or an error frame); `fallback` when its code says nothing. */
export function friendlyText(error, fallback = null) {
  if (!error) return fallback || "Something went wrong.";
  if (isRateLimited(error)) return slowDownText(retryAfterMs(error));
  const code = error.code;
  return (
    PHOTO_ERRORS[code] || MESSAGE_ERRORS[code] || GENERAL_ERRORS[code] || fallback || error.message || "Something went wrong."
  );
}

/** The sentence for a refused image upload. */
export function photoErrorText(error) {
  if (error && error.status === 413 && !PHOTO_ERRORS[error.code]) return PHOTO_ERRORS.file_too_large;
  return friendlyText(error, "That photo could not be added.");
}

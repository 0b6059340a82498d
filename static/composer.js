// The conversation's composer: a character counter that matches the server's limit, and attachments.
//
//   POST /api/conversations/<id>/attachments/   the file's raw bytes, typed by Content-Type, `?name=` the
//                                               file's name -> 201 {id, url, content_type, size, name?}
//   then a message carries it: `{"type": "message", "content": ..., "attachment_id": id}` on the
//   conversation's socket, or POST /api/conversations/<id>/messages/ with the same fields.
//
// An uploaded file belongs to its conversation and is removed by the server if no message carries it
// within UNSENT_ATTACHMENT_TTL: leaving the conversation simply forgets it here.
//
// Names of files (ours, and other people's) are only ever written as text, never as markup.

import { ApiError, parseRetryAfter } from "./api.js";
import { countDown, friendlyText, isRateLimited, retryAfterMs } from "./friendly.js";
import { $, h, imageWithFallback, thumbnailOf } from "./ui.js";

export const MAX_MESSAGE_CHARS = 4000; // MAX_CONTENT_CHARS's default; a server set lower says message_too_long
const COUNTER_FROM = 0.8; // the counter shows from this share of the limit on
const MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024; // MAX_UPLOAD_BYTES's default: refused here before it is sent

// ATTACHMENT_TYPES of the server (services/media/content.py), as a person says them.
const TYPE_NAMES = {
  "image/jpeg": "JPEG image",
  "image/png": "PNG image",
  "image/webp": "WebP image",
  "image/gif": "GIF image",
  "application/pdf": "PDF document",
  "text/plain": "Text file",
};
const ACCEPT = [...Object.keys(TYPE_NAMES), ".pdf", ".txt"].join(",");

// The codes of an attachment upload (handlers/conversations.py, services/media/store.py), in plain words.
const UPLOAD_ERRORS = {
  body_too_large: "That file is too large: send one under 5 MB.",
  file_too_large: "That file is too large: send one under 5 MB.",
  unsupported_media_type: "That type of file cannot be sent: send a photo (JPEG, PNG, WebP, GIF), a PDF or a text file.",
  invalid_image: "That file is not a readable image: it may be damaged, or not the image it says it is.",
  image_too_many_pixels: "That image has too many pixels: send a smaller one (at most 25 megapixels).",
  empty_file: "That file is empty.",
  storage_quota_exceeded: "Your storage is full: remove a photo (or unsend a message with a file) first.",
  conversation_not_found: "This conversation is closed.",
  network: "The file could not be sent: the server cannot be reached.",
};

/** The sentence for a refused upload. */
export function uploadErrorText(error) {
  if (isRateLimited(error)) return friendlyText(error);
  if (error && error.status === 413 && !UPLOAD_ERRORS[error.code]) return UPLOAD_ERRORS.file_too_large;
  return UPLOAD_ERRORS[error && error.code] || friendlyText(error, "The file could not be sent.");
}

/** Characters as the server counts them (code points), of the text that is sent (trimmed). */
export function charCount(text) {
  let count = 0;
  for (const _ of text.trim()) count += 1;
  return count;
}

/** "12 KB", "1.4 MB", "512 bytes". */
export function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** An attachment in one line (the list of matches, a toast): "Photo", or "File: <its name>". */
export function attachmentLabel(attachment) {
  if ((attachment.content_type || "").startsWith("image/")) return "Photo";
  return `File: ${attachment.name || typeName(attachment.content_type)}`;
}

function typeName(contentType) {
  return TYPE_NAMES[contentType] || "File";
}

/** Only a web address the server made (http, https, or relative) becomes a link or an image. */
function safeUrl(url) {
  try {
    const parsed = new URL(String(url), location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/**
 * An attachment in a message bubble: an image as a preview (its 512 px thumbnail) that opens the full
 * one; any other file as a chip with its name, type and size, that downloads it.
 */
export function attachmentView(attachment) {
  const url = safeUrl(attachment.url);
  const type = attachment.content_type || "";
  const name = typeof attachment.name === "string" && attachment.name ? attachment.name : null;
  if (type.startsWith("image/") && url) {
    const img = imageWithFallback(
      { class: "attachment-image", alt: name ? `Image: ${name}` : "Image attachment", loading: "lazy" },
      thumbnailOf(url),
      url,
    );
    return h("a", { class: "attachment-link", href: url, target: "_blank", rel: "noopener" }, img);
  }
  return h(
    url ? "a" : "span",
    {
      class: "file-chip",
      href: url,
      download: url ? name || "" : null,
      target: url ? "_blank" : null,
      rel: url ? "noopener" : null,
      dataset: { type },
    },
    h("span", { class: "file-chip-icon", "aria-hidden": "true" }, type === "application/pdf" ? "PDF" : "TXT"),
    h(
      "span",
      { class: "file-chip-text" },
      h("span", { class: "file-chip-name" }, name || typeName(type)),
      h("span", { class: "file-chip-meta" }, `${typeName(type)} · ${sizeText(Number(attachment.size) || 0)}`),
    ),
    url ? h("span", { class: "file-chip-action" }, "Download") : null,
  );
}

/**
 * A file's bytes POSTed with upload progress (fetch has none): the stored attachment, or an ApiError.
 * `request.abort()` stops it.
 */
function uploadFile(api, path, file, request, onProgress) {
  return api.freshAccessToken().then(
    (token) =>
      new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        request.abort = () => xhr.abort();
        xhr.open("POST", path);
        xhr.setRequestHeader("Authorization", `Bearer ${token}`);
        xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
        xhr.upload.addEventListener("progress", (event) => {
          if (event.lengthComputable) onProgress(event.loaded / event.total);
        });
        xhr.addEventListener("load", () => {
          let body = null;
          try {
            body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
          } catch {
            body = null;
          }
          if (xhr.status >= 200 && xhr.status < 300) resolve(body);
          else reject(new ApiError(xhr.status, body, { retryAfterMs: parseRetryAfter(xhr.getResponseHeader("Retry-After")) }));
        });
        const unreachable = () => reject(new ApiError(0, { error: { code: "network", message: "The server cannot be reached." } }));
        xhr.addEventListener("error", unreachable);
        xhr.addEventListener("abort", unreachable);
        xhr.send(file);
      }),
  );
}

/**
 * The composer's extras, around its textarea and Send button: the counter (#composer-count), the
 * attach button (#attach) with its hidden file input, and the chip of the file picked (#composer-file).
 * `conversation()` is the id of the open conversation (null: none); `onChange()` is called whenever
 * what Send would do changes.
 */
export class ComposerExtras {
  constructor({ api, conversation }) {
    this.api = api;
    this.conversation = conversation;
    this.input = $("#composer-input");
    this.send = $("#send");
    this.counter = $("#composer-count");
    this.button = $("#attach");
    this.picker = $("#attach-input");
    this.chip = $("#composer-file");
    this.file = null; // {file, preview (an object URL), attachment (once stored), error, progress, for}
    this.editing = false;
    this.enabled = true;
    this.picker.setAttribute("accept", ACCEPT);
    this.button.addEventListener("click", () => this.picker.click());
    this.picker.addEventListener("change", () => {
      const [file] = this.picker.files;
      this.picker.value = "";
      if (file) this.pick(file);
    });
    this.input.addEventListener("input", () => this.update());
    this.update();
  }

  /** Characters in the composer, and whether that is over the limit. */
  get count() {
    return charCount(this.input.value);
  }

  get over() {
    return this.count > MAX_MESSAGE_CHARS;
  }

  /** The stored attachment the next message carries, if any. */
  get attachment() {
    return this.file && this.file.attachment ? this.file.attachment : null;
  }

  /** A file is being uploaded or was refused: Send waits for it (or for its removal). */
  get holding() {
    return Boolean(this.file) && !this.file.attachment;
  }

  /** What Send would send now: {content, attachment}, or null when it cannot (and says why). */
  ready() {
    const content = this.input.value.trim();
    if (this.over) {
      this.counter.classList.add("flash");
      setTimeout(() => this.counter.classList.remove("flash"), 600);
      return null;
    }
    if (!this.editing && this.holding) return null;
    const attachment = this.editing ? null : this.attachment;
    return { content, attachment };
  }

  /** Conversation open (or not): the composer can be used, or is greyed out. */
  setEnabled(enabled) {
    this.enabled = enabled;
    this.update();
  }

  /** Editing an own message: its text only, so no attachment meanwhile. */
  setEditing(editing) {
    this.editing = editing;
    this.update();
  }

  /** Another conversation (or none): the file picked for this one is forgotten. */
  reset() {
    this.clear();
    this.update();
  }

  clear() {
    const entry = this.file;
    if (entry) {
      if (entry.preview) URL.revokeObjectURL(entry.preview);
      entry.request.cancelled = true;
      entry.request.abort();
      entry.request.stopCountDown();
    }
    this.file = null;
    this.renderFile();
    this.update();
  }

  async pick(file) {
    const conversationId = this.conversation();
    if (conversationId === null) return;
    this.clear();
    const request = { cancelled: false, abort: () => {}, stopCountDown: () => {} };
    const entry = { file, attachment: null, error: null, progress: 0, request };
    if (file.type.startsWith("image/")) entry.preview = URL.createObjectURL(file);
    this.file = entry;
    if (file.size > MAX_ATTACHMENT_BYTES) {
      entry.error = UPLOAD_ERRORS.file_too_large;
    } else if (file.size === 0) {
      entry.error = UPLOAD_ERRORS.empty_file;
    } else if (file.type && !TYPE_NAMES[file.type]) {
      entry.error = UPLOAD_ERRORS.unsupported_media_type;
    }
    this.renderFile();
    this.update();
    if (entry.error) return;
    const path = `/api/conversations/${conversationId}/attachments/?name=${encodeURIComponent(file.name)}`;
    try {
      const attachment = await uploadFile(this.api, path, file, request, (share) => {
        if (request.cancelled) return;
        entry.progress = share;
        this.renderProgress();
      });
      if (request.cancelled) return;
      entry.attachment = attachment;
    } catch (error) {
      if (request.cancelled) return;
      entry.error = error;
    }
    this.renderFile();
    this.update();
  }

  /** The chip of the file picked: its preview or type, its name and size, progress or what went wrong. */
  renderFile() {
    const entry = this.file;
    if (!entry) {
      this.chip.hidden = true;
      this.chip.replaceChildren();
      return;
    }
    const { file } = entry;
    const status = h("span", { class: "composer-file-status", role: entry.error ? "alert" : "status" });
    const remove = h(
      "button",
      { type: "button", class: "composer-file-remove", "aria-label": `Remove ${file.name}`, onclick: () => this.removeFile() },
      "✕",
    );
    this.chip.replaceChildren(
      entry.preview
        ? h("img", { class: "composer-file-preview", src: entry.preview, alt: "" })
        : h("span", { class: "file-chip-icon", "aria-hidden": "true" }, file.type === "application/pdf" ? "PDF" : "TXT"),
      h(
        "span",
        { class: "file-chip-text" },
        h("span", { class: "file-chip-name" }, file.name),
        h("span", { class: "file-chip-meta" }, `${typeName(file.type)} · ${sizeText(file.size)}`),
        entry.error || entry.attachment ? null : h("progress", { class: "composer-file-progress", max: "1", value: String(entry.progress), "aria-label": `Uploading ${file.name}` }),
        status,
      ),
      remove,
    );
    this.chip.hidden = false;
    this.chip.dataset.state = entry.error ? "error" : entry.attachment ? "ready" : "uploading";
    if (entry.error && isRateLimited(entry.error)) {
      // "Slow down — try again in N s", then it is tried again by itself.
      entry.request.stopCountDown = countDown(status, retryAfterMs(entry.error), { onDone: () => this.pick(file) });
    } else if (entry.error) {
      status.textContent = typeof entry.error === "string" ? entry.error : uploadErrorText(entry.error);
    } else if (entry.attachment) {
      status.textContent = "Ready to send";
    } else {
      status.textContent = "Uploading…";
    }
  }

  renderProgress() {
    const bar = $(".composer-file-progress", this.chip);
    if (bar && this.file) bar.value = this.file.progress;
  }

  removeFile() {
    this.clear();
    this.input.focus();
  }

  /** The counter, the attach button and Send, as the text and the file now stand. */
  update() {
    const count = this.count;
    const over = count > MAX_MESSAGE_CHARS;
    const shown = count >= MAX_MESSAGE_CHARS * COUNTER_FROM;
    this.counter.hidden = !shown;
    this.counter.classList.toggle("over", over);
    const text = over
      ? `${count.toLocaleString("en")} / ${MAX_MESSAGE_CHARS.toLocaleString("en")}: ${(count - MAX_MESSAGE_CHARS).toLocaleString("en")} too many`
      : `${count.toLocaleString("en")} / ${MAX_MESSAGE_CHARS.toLocaleString("en")}`;
    if (this.counter.textContent !== text) this.counter.textContent = text;
    if (over) this.input.setAttribute("aria-invalid", "true");
    else this.input.removeAttribute("aria-invalid");
    this.button.disabled = !this.enabled || this.editing;
    this.send.disabled = !this.enabled || over || (!this.editing && this.holding);
  }
}

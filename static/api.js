// The REST side of the protocol: JSON in and out, `Authorization: Bearer <access>`, and the token pair.
//
// The access token lives in this object only (never in localStorage). The refresh token never reaches
// the page's scripts at all: the server keeps it in an HttpOnly, SameSite=Strict cookie scoped to
// /api/token/refresh/ (sign-in with `cookie: true`), so a reload or a return through Back signs the user
// in again without a password (`resume`), and a script injected into the page cannot take the session.
//
// Access tokens are short-lived JWTs. Rather than waiting for a 401, the client reads the token's own
// lifetime (`exp - iat`) and refreshes a little before it runs out. It counts from the moment the token
// arrived, not from `exp` against the local clock, so a browser whose clock is off still refreshes on
// time. Refresh tokens rotate: each one works once, so refreshes are serialised through one promise.

export class ApiError extends Error {
  constructor(status, body, { retryAfterMs = null } = {}) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "error";
    this.fields = error.fields || null; // per-field messages of a 400
    this.retryAfterMs = retryAfterMs; // a 429's `Retry-After`, in milliseconds
  }
}

/** `Retry-After` in milliseconds: delay-seconds, or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter(value) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** The claims of a JWT (`{user_id, token_type, exp, iat, jti}` here). Not verified: the server does that. */
export function decodeJwt(token) {
  const payload = token.split(".")[1] || "";
  const base64 = payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "=");
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

// Set while this browser holds a session cookie (a flag, no secret): a page that never signed in does not
// ask the server to resume a session it has not got.
const SESSION_HINT = "chat-session";

function hintSession(on) {
  try {
    if (on) localStorage.setItem(SESSION_HINT, "1");
    else localStorage.removeItem(SESSION_HINT);
  } catch {
    // Storage refused (a privacy mode): a reload then asks the server, which answers 400 without a cookie.
  }
}

function sessionHinted() {
  try {
    return localStorage.getItem(SESSION_HINT) !== null;
  } catch {
    return true;
  }
}

// Refresh when a quarter of the lifetime is left, but never earlier than a minute before the end.
const REFRESH_MARGIN_MAX_S = 60;
// A scheduled refresh that could not reach the server is tried again after this long.
const REFRESH_RETRY_MS = 5000;

export class Api {
  /** `onSignedOut(reason)` is called when the session cannot be kept (refresh refused). */
  constructor({ onSignedOut = () => {} } = {}) {
    this.onSignedOut = onSignedOut;
    this.tokens = null; // {access, refresh (null: in the session cookie), userId, expiresAt (ms, local clock)}
    this.refreshTimer = null;
    this.refreshing = null;
  }

  get signedIn() {
    return this.tokens !== null;
  }

  get userId() {
    return this.tokens ? this.tokens.userId : null;
  }

  // -- tokens ---------------------------------------------------------------------------------------

  setTokens({ access, refresh }) {
    const claims = decodeJwt(access);
    const lifetimeS = Math.max(1, claims.exp - claims.iat);
    const received = Date.now();
    this.tokens = { access, refresh: refresh || null, userId: claims.user_id, expiresAt: received + lifetimeS * 1000 };
    const marginS = Math.min(REFRESH_MARGIN_MAX_S, lifetimeS / 4);
    this.#scheduleRefresh((lifetimeS - marginS) * 1000);
  }

  #scheduleRefresh(delayMs) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch((error) => {
        // 401 already signed the user out; anything else (server restarting) is retried.
        if (error.status !== 401 && this.tokens) this.#scheduleRefresh(REFRESH_RETRY_MS);
      });
    }, delayMs);
  }

  clearTokens() {
    clearTimeout(this.refreshTimer);
    this.tokens = null;
    hintSession(false);
  }

  /** POST /api/token/refresh/ -> a new access token (and the cookie rotated). The old refresh token is spent. */
  refresh() {
    if (!this.tokens) return Promise.reject(new ApiError(401, null));
    if (!this.refreshing) {
      const session = this.tokens;
      this.refreshing = this.#rotate(session.refresh)
        .then((pair) => {
          if (this.tokens === session) this.setTokens(pair);
          return this.tokens.access;
        })
        .catch((error) => {
          // 401: the refresh token expired or was revoked. Anything else (server restarting) may pass.
          if (error.status === 401 && this.tokens === session) {
            this.clearTokens();
            this.onSignedOut("Your session expired. Please sign in again.");
          }
          throw error;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  /**
   * One rotation, with the token held here or else the session cookie. Every tab of the site shares the
   * cookie, and a refresh token works once (a reuse revokes the session): cookie rotations are taken one
   * tab at a time (Web Locks), so that each tab sends the cookie the previous rotation left.
   */
  #rotate(refreshToken) {
    const call = () =>
      this.#fetchJson("POST", "/api/token/refresh/", { json: refreshToken ? { refresh: refreshToken } : {} });
    if (!refreshToken && navigator.locks) return navigator.locks.request("chat-session-refresh", call);
    return call();
  }

  /** Sign in again from the session cookie of an earlier visit; false when there is none (or it ended). */
  async resume() {
    if (!sessionHinted()) return false;
    try {
      this.setTokens(await this.#rotate(null));
      return true;
    } catch (error) {
      if (error.status !== 400 && error.status !== 401) throw error;
      hintSession(false); // no cookie, or a session that ended
      return false;
    }
  }

  /** DELETE /api/token/refresh/: end the session on the server (its refresh tokens) and clear the cookie. */
  endSession() {
    return this.#fetchJson("DELETE", "/api/token/refresh/", { json: {} }).catch(() => {});
  }

  /**
   * An access token good for at least a few more seconds, for a WebSocket handshake: sockets send it
   * once, in the URL (`?token=`), and the server checks it only when the socket opens (an open socket
   * outlives its token).
   */
  async freshAccessToken() {
    if (!this.tokens) throw new ApiError(401, null);
    if (this.tokens.expiresAt - Date.now() < 5000) await this.refresh();
    return this.tokens.access;
  }

  // -- account --------------------------------------------------------------------------------------

  /** POST /api/register/ then POST /api/token/: a new account, signed in. */
  async register(fields) {
    await this.#fetchJson("POST", "/api/register/", { json: fields });
    return this.signIn(fields.username, fields.password);
  }

  async signIn(username, password) {
    // The refresh token goes into the session cookie; the answer carries the access token only.
    const pair = await this.#fetchJson("POST", "/api/token/", { json: { username, password, cookie: true } });
    this.setTokens(pair);
    hintSession(true);
    return pair;
  }

  // -- authenticated calls --------------------------------------------------------------------------

  get(path) {
    return this.request("GET", path);
  }
  post(path, json) {
    return this.request("POST", path, { json });
  }
  patch(path, json) {
    return this.request("PATCH", path, { json });
  }
  /** DELETE, with a JSON body when given (deleting one's account takes the password). */
  delete(path, json) {
    return this.request("DELETE", path, json === undefined ? {} : { json });
  }
  /** GET a file (a download): {blob, filename}, the name from its Content-Disposition. */
  download(path) {
    return this.request("GET", path, { raw: true });
  }
  put(path, json) {
    return this.request("PUT", path, { json });
  }
  /** Raw bytes (a picture upload): the body is the file itself, typed by its Content-Type. */
  putBytes(path, blob) {
    return this.request("PUT", path, { body: blob, contentType: blob.type || "application/octet-stream" });
  }
  /** Raw bytes, POSTed (a photo added to the profile's photos). */
  postBytes(path, blob) {
    return this.request("POST", path, { body: blob, contentType: blob.type || "application/octet-stream" });
  }

  async request(method, path, options = {}) {
    if (!this.tokens) throw new ApiError(401, null);
    try {
      return await this.#fetchJson(method, path, { ...options, token: this.tokens.access });
    } catch (error) {
      // An access token can still expire between two scheduled refreshes (a laptop that slept):
      // refresh once and replay the request.
      if (error.status === 401 && this.tokens) {
        const access = await this.refresh();
        return this.#fetchJson(method, path, { ...options, token: access });
      }
      throw error;
    }
  }

  async #fetchJson(method, path, { json, body, contentType, token, raw = false } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (json !== undefined) {
      body = JSON.stringify(json);
      headers["Content-Type"] = "application/json";
    } else if (contentType) {
      headers["Content-Type"] = contentType;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (networkError) {
      const error = new ApiError(0, { error: { code: "network", message: "The server cannot be reached." } });
      error.cause = networkError;
      throw error;
    }
    if (raw && response.ok) {
      const disposition = response.headers.get("Content-Disposition") || "";
      const match = /filename="?([^";]+)"?/i.exec(disposition);
      return { blob: await response.blob(), filename: match ? match[1] : "download" };
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      throw new ApiError(response.status, data, { retryAfterMs: parseRetryAfter(response.headers.get("Retry-After")) });
    }
    return data;
  }
}

// The WebSocket side of the protocol, with the reconnect strategy of the specification:
//
//   - after a close, wait 1 s, 2 s, 4 s, 8 s ... capped at 30 s, each delay moved by a random ±20 %
//     so that thousands of clients dropped by one server restart do not all come back in the same
//     instant;
//   - never retry after 1008 (policy: origin, rate or connection limit), 4000 (no token),
//     4001 (not a participant: unknown, unmatched or blocked conversation) or 4002 (token invalid or
//     expired): trying again would get the same answer;
//   - everything else (1001 server going away, 1006 network lost, 1011 server error, 1013 slow reader
//     or full node...) is retried.
//
// The URL is rebuilt before every attempt: it carries a fresh access token (`?token=`), and a
// conversation socket carries `?after=<last message id seen>` so that the server replays what was
// missed while disconnected.

export const NO_RETRY_CODES = new Set([1008, 4000, 4001, 4002]);

export const CLOSE_REASONS = {
  1000: "closed",
  1001: "server going away",
  1006: "connection lost",
  1008: "refused by policy",
  1009: "frame too large",
  1011: "server error",
  1013: "server busy, retrying",
  4000: "not authenticated",
  4001: "conversation closed",
  4002: "session expired",
  4003: "invalid frame",
};

const BASE_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

/** The specification's delay before reconnect attempt number `attempt` (0, 1, 2 ...). */
export function reconnectDelay(attempt) {
  const exponential = Math.min(BASE_DELAY_MS * 2 ** attempt, MAX_DELAY_MS);
  const jitter = exponential * 0.2 * (Math.random() * 2 - 1);
  return exponential + jitter;
}

/** `ws://host/path` (or `wss://` when the page came over https). */
export function socketUrl(path, params) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams(params).toString();
  return `${scheme}//${location.host}${path}${query ? `?${query}` : ""}`;
}

/**
 * A WebSocket that comes back by itself.
 *
 * `url()` is async and called before every attempt. `onFrame(frame)` receives each parsed JSON frame.
 * `onState(state)` receives {status, attempt, delayMs, retryAt, code, reason}, with status one of
 * "connecting", "open", "waiting" (a retry is scheduled), "closed" (final: no retry) and "stopped".
 */
export class ReconnectingSocket {
  constructor({ name, url, onFrame, onState = () => {}, onOpen = () => {} }) {
    this.name = name;
    this.url = url;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onOpen = onOpen;
    this.ws = null;
    this.attempt = 0; // consecutive failed attempts; back to 0 once a connection opens
    this.opens = 0; // how many times a connection opened (the first is not a reconnect)
    this.timer = null;
    this.stopped = false;
    this.state = { status: "idle" };
  }

  start() {
    this.stopped = false;
    this.#connect();
  }

  /** Close for good (code 1000): leaving a conversation or signing out. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, "client done");
      this.ws = null;
    }
    this.#setState({ status: "stopped" });
  }

  /** Try at once instead of waiting out the backoff (the browser came back online, or the user asked). */
  retryNow() {
    if (this.stopped || this.state.status !== "waiting") return;
    clearTimeout(this.timer);
    this.#connect();
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Send one JSON frame; false when not connected (the caller decides what to do then). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  #setState(state) {
    this.state = state;
    this.onState(state);
  }

  async #connect() {
    if (this.stopped) return;
    this.#setState({ status: "connecting", attempt: this.attempt });
    let url;
    try {
      url = await this.url();
    } catch (error) {
      // No usable token (refresh failed, or the server is down): count it as a failed attempt.
      if (error && error.status === 401) {
        this.#setState({ status: "closed", code: 4002, reason: CLOSE_REASONS[4002] });
        return;
      }
      this.#scheduleRetry(1006, "server unreachable");
      return;
    }
    if (this.stopped) return;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.opens += 1;
      this.#setState({ status: "open", reconnected: this.opens > 1 });
      this.onOpen({ reconnected: this.opens > 1 });
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (NO_RETRY_CODES.has(event.code)) {
        this.#setState({ status: "closed", code: event.code, reason: event.reason || CLOSE_REASONS[event.code] });
        return;
      }
      this.#scheduleRetry(event.code, event.reason);
    };
    // A failed handshake fires `error` then `close` (code 1006): the close handler does the work.
    ws.onerror = () => {};
  }

  #scheduleRetry(code, reason) {
    const delayMs = reconnectDelay(this.attempt);
    this.attempt += 1;
    this.#setState({
      status: "waiting",
      attempt: this.attempt,
      delayMs,
      retryAt: Date.now() + delayMs,
      code,
      reason: reason || CLOSE_REASONS[code] || `code ${code}`,
    });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#connect(), delayMs);
  }
}

// "Enable notifications": Web Push for when this page is closed (docs/push.md).
//
// While the page is open its WebSockets deliver everything, and the server pushes nothing: it pushes
// only to users with no socket anywhere. Enabling takes four steps: the service worker (/sw.js, which
// shows the pushes), the browser's permission, a PushSubscription made with the server's VAPID key
// (GET /api/push/vapid-public-key/), and POST /api/devices/ with that subscription.
//
// Signing out removes the device on the server but keeps the browser's subscription, so that whoever
// signs in next on this browser is not pushed the previous user's notifications and can enable them
// for themselves without a new permission prompt.

/** Service workers, the Push API and notifications, on a secure origin (https, or localhost). */
export function pushSupported() {
  return window.isSecureContext && "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(base64url.length / 4) * 4, "=");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function sameKey(buffer, bytes) {
  if (!buffer) return false;
  const mine = new Uint8Array(buffer);
  return mine.length === bytes.length && mine.every((value, i) => value === bytes[i]);
}

export class PushToggle {
  /**
   * `button` toggles; `notify({title, text, kind})` reports; `onOpen(push)` runs when the user clicks a
   * notification while a page is open (the service worker focuses this page and forwards the push).
   */
  constructor(api, button, { notify, onOpen }) {
    this.api = api;
    this.button = button;
    this.notify = notify;
    this.deviceId = null;
    this.key = null;
    this.busy = false;
    button.addEventListener("click", () => this.toggle());
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.addEventListener("message", (event) => {
        if (event.data && event.data.type === "push-open" && this.api.signedIn) onOpen(event.data.push || {});
      });
    }
  }

  /** After sign-in: offer the button when the browser and the server can do Web Push. */
  async start() {
    this.deviceId = null;
    if (!pushSupported()) return;
    try {
      this.key = keyBytes((await this.api.get("/api/push/vapid-public-key/")).public_key);
    } catch {
      return; // 404 webpush_disabled: this server does not do Web Push
    }
    const subscription = await this.#currentSubscription();
    if (subscription && Notification.permission === "granted") {
      const devices = await this.api.get("/api/devices/").catch(() => []);
      const mine = devices.find((d) => d.endpoint === subscription.endpoint);
      if (mine) this.deviceId = mine.id;
    }
    this.#render();
    this.button.hidden = false;
  }

  /** At sign-out, before the tokens go: this browser stops receiving this user's pushes. */
  stop() {
    if (this.deviceId !== null && this.api.signedIn) {
      this.api.delete(`/api/devices/${this.deviceId}/`).catch(() => {});
    }
    this.deviceId = null;
    this.button.hidden = true;
  }

  async toggle() {
    if (this.busy) return;
    this.busy = true;
    this.button.disabled = true;
    try {
      if (this.deviceId === null) await this.#enable();
      else await this.#disable();
    } catch (error) {
      this.notify({ title: "Notifications", text: error.message || String(error), kind: "error" });
    } finally {
      this.busy = false;
      this.button.disabled = false;
      this.#render();
    }
  }

  async #enable() {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      this.notify({
        title: "Notifications are blocked",
        text: "Allow notifications for this site in the browser's settings, then try again.",
        kind: "error",
      });
      return;
    }
    const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    await navigator.serviceWorker.ready;
    let subscription = await registration.pushManager.getSubscription();
    // A subscription made with another server key (the server's key changed) cannot be pushed to.
    if (subscription && !sameKey(subscription.options.applicationServerKey, this.key)) {
      await subscription.unsubscribe();
      subscription = null;
    }
    if (!subscription) {
      subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: this.key });
    }
    const device = await this.api.post("/api/devices/", { kind: "webpush", ...subscription.toJSON() });
    this.deviceId = device.id;
    this.notify({ title: "Notifications on", text: "You will be told about messages while Spark is closed.", timeoutMs: 4000 });
  }

  async #disable() {
    try {
      await this.api.delete(`/api/devices/${this.deviceId}/`);
    } catch (error) {
      if (error.status !== 404) throw error;
    }
    this.deviceId = null;
    const subscription = await this.#currentSubscription();
    if (subscription) await subscription.unsubscribe();
  }

  async #currentSubscription() {
    const registration = await navigator.serviceWorker.getRegistration("/");
    return registration ? registration.pushManager.getSubscription() : null;
  }

  #render() {
    const on = this.deviceId !== null;
    this.button.querySelector(".push-label").textContent = on ? "Notifications on" : "Enable notifications";
    this.button.setAttribute("aria-pressed", String(on));
    this.button.title = on ? "Stop notifications on this browser" : "Be notified while Spark is closed";
  }
}

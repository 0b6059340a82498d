// Spark: a small dating-and-chat client that uses nothing but the server's public API.
//
//   REST (api.js)          the source of truth: account, profile, discover, likes, matches, history.
//   /ws/notifications/     one socket per signed-in page: new_message, new_match and new_like toasts.
//   /ws/conversations/<id>/ one socket for the conversation on screen: messages, edits and unsends,
//                          typing, read receipts, the other person's online/offline status.
//
// Both sockets reconnect by themselves (socket.js). After a reconnect the notifications side re-reads
// the lists over REST (notifications sent while away are not replayed), and the conversation side asks
// for `?after=<last message id seen>`: the server replays every message stored since, in order, and
// the page drops any id it already shows, so nothing is missed and nothing appears twice.

import { Api, ApiError } from "./api.js";
import { countDown, friendlyText, isRateLimited, retryAfterMs, slowDownText, stopCountDown } from "./friendly.js";
import { PhotoEditor, photoCarousel } from "./photos.js";
import { PushToggle } from "./push.js";
import { ReportDialog } from "./report.js";
import { SettingsPanel } from "./settings.js";
import { AccountPanel } from "./account.js";
import { MatchMoment } from "./match_moment.js";
import { renderChatsBadge } from "./tabs.js";
import { ComposerExtras, attachmentLabel, attachmentView } from "./composer.js";
import { chosenLocation, cityLocation, currentPosition, fillCities } from "./location.js";
import { CLOSE_REASONS, ReconnectingSocket, socketUrl } from "./socket.js";
import {
  $, $$, avatar, clearFormError, clockTime, closeMenu, confirmDialog, fillAvatar, h, menuOpenFor, nameOf, openMenu,
  relativeTime, shortTime, showFormError, toast, dismissToast, toastShown,
} from "./ui.js";

const HISTORY_PAGE = 30; // messages per history request (the server allows up to 100)
const DISCOVER_BATCH = 10;
// People who sign up (or widen their preferences) while the deck is being gone through are taken in by
// reading the first page again: when this few cards are left, and on coming back to Discover (or to the
// page) after this long. One request each time, never two at once (DISCOVER_PER_10_MIN is 60).
const DISCOVER_TOP_UP_AT = 2;
const DISCOVER_STALE_MS = 2 * 60_000;
const PRESENCE_POLL_MS = 30_000; // online dots of matches whose conversation is not open
const TYPING_IDLE_MS = 3000; // stop "typing" after this much silence in the composer
const TYPING_REPEAT_MS = 3000; // the server forgets a silent typist after a few seconds: say it again
const THEIR_TYPING_MAX_MS = 12_000; // hide their indicator even if the `false` frame never comes
// MESSAGE_EDIT_WINDOW's default. The page offers Edit only this long after sending; a server set shorter
// refuses with `edit_window_closed`, which is said as such.
const EDIT_WINDOW_MS = 15 * 60_000;
const MUTE_CHOICES = [
  { label: "For 1 hour", ms: 3600_000 },
  { label: "For 8 hours", ms: 8 * 3600_000 },
  { label: "For a week", ms: 7 * 24 * 3600_000 },
  { label: "Until I turn it back on", ms: null },
];

const api = new Api({ onSignedOut: (reason) => signOut(reason) });
let pushToggle = null; // the "Enable notifications" button (push.js), made in setup()
let photoEditor = null; // the profile's photos (photos.js), made in setup()
let settingsPanel = null; // notification preferences and blocked people (settings.js), made in setup()
let accountPanel = null; // download my data, delete my account (account.js), made in setup()
let reportDialog = null; // "Report …" (report.js), made in setup()
let matchMoment = null; // "It’s a match!" (match_moment.js), made in setup()
let matchAnnouncements = Promise.resolve(); // new_match notifications announced one after the other
let composerExtras = null; // the composer's counter and attachments (composer.js), made in setupChat()

const state = {
  me: null, // own profile (GET /api/users/me/)
  people: new Map(), // user id -> what we know: summary, public profile, {status, last_seen}
  matches: new Map(), // conversation id -> {conversationId, matchId, user, lastMessage, unread, updatedAt}
  likes: [],
  candidates: [],
  discoverLoaded: false,
  discoverReadAt: 0, // when the first page of Discover was last read (Date.now())
  decided: new Set(), // ids liked or passed in this session: a read in flight meanwhile may still list them
  toppingUp: false,
  panel: "discover",
  chat: null, // the open Chat, if any
  notifications: null, // the notifications ReconnectingSocket
  lastNotificationId: null, // the newest notification id seen: a reconnect resumes after it (`?after=`)
  presenceTimer: null,
  announcedMatches: new Set(),
  mutes: new Map(), // conversation id -> {muted, muted_until}: the user's own mutes (nobody else sees them)
};

/** Lists come back as an array or as {results: [...]} (paged endpoints); accept both. */
function listOf(data) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data.results)) return data.results;
  return [];
}

/** A user object from any of the API's shapes (a candidate, a like, a match). */
function userOf(item) {
  return (item && (item.user || item.liker || item.from_user || item.profile)) || item;
}

function remember(user) {
  if (!user || !user.id) return user;
  const known = state.people.get(user.id) || {};
  const merged = { ...known, ...Object.fromEntries(Object.entries(user).filter(([, v]) => v !== undefined)) };
  state.people.set(user.id, merged);
  return merged;
}

function person(id) {
  return state.people.get(id) || { id };
}

/**
 * Frames carry the seed's short user summary ({id, username, profile_picture}); the display name and
 * the rest come from GET /api/users/<id>/, fetched once per person.
 */
async function withProfile(user) {
  remember(user);
  if (person(user.id).display_name === undefined) {
    try {
      remember(await api.get(`/api/users/${user.id}/`));
    } catch {
      // Blocked or gone: the summary will do.
    }
  }
  return person(user.id);
}

function reportError(error, title = "Something went wrong") {
  if (error instanceof ApiError && error.status === 401 && !api.signedIn) return; // already signed out
  if (isRateLimited(error)) {
    toast({ title: slowDownText(retryAfterMs(error)), kind: "error" });
    return;
  }
  toast({ title, text: friendlyText(error), kind: "error" });
}

/** A form's error line: a rate limit counts down there, anything else is said once. */
function formError(form, error) {
  const box = $(".form-error", form);
  stopCountDown(box);
  if (isRateLimited(error)) {
    clearFormError(form);
    box.hidden = false;
    countDown(box, retryAfterMs(error), { onDone: () => clearFormError(form) });
  } else {
    showFormError(form, error);
  }
}

// =====================================================================================================
// Signing in and out
// =====================================================================================================

function setupAuthForms() {
  const tabs = { signin: $("#tab-signin"), register: $("#tab-register") };
  const forms = { signin: $("#signin-form"), register: $("#register-form") };
  const select = (which) => {
    for (const key of Object.keys(tabs)) {
      const on = key === which;
      tabs[key].setAttribute("aria-selected", String(on));
      tabs[key].tabIndex = on ? 0 : -1;
      $(`#${key}-panel`).hidden = !on;
    }
  };
  fillCities($("#reg-location-cities"));
  tabs.signin.addEventListener("click", () => select("signin"));
  tabs.register.addEventListener("click", () => select("register"));
  for (const tab of Object.values(tabs)) {
    tab.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
        const next = tab === tabs.signin ? "register" : "signin";
        select(next);
        tabs[next].focus();
      }
    });
  }

  forms.signin.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = forms.signin;
    stopCountDown($(".form-error", form));
    clearFormError(form);
    const data = new FormData(form);
    await busy(form, async () => {
      try {
        await api.signIn(String(data.get("username")).trim(), String(data.get("password")));
        form.reset();
        await startSession();
      } catch (error) {
        formError(form, error.code === "invalid_credentials" ? { message: "Wrong username or password." } : error);
      }
    });
  });

  forms.register.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = forms.register;
    stopCountDown($(".form-error", form));
    clearFormError(form);
    const data = new FormData(form);
    const fields = {
      username: String(data.get("username")).trim(),
      password: String(data.get("password")),
      gender: data.get("gender"),
      interested_in: data.getAll("interested_in"),
    };
    const displayName = String(data.get("display_name") || "").trim();
    if (displayName) fields.display_name = displayName;
    if (data.get("birthdate")) fields.birthdate = data.get("birthdate");
    const bio = String(data.get("bio") || "").trim();
    if (bio) fields.bio = bio;
    await busy(form, async () => {
      try {
        // The browser's position is asked before the account exists: a refusal is said beside the field.
        const location = await chosenLocation(form.elements.location);
        await api.register(fields); // POST /api/register/, then POST /api/token/
        // Before the session starts, so that the first Discover already has distances.
        const unsaved = location ? await api.patch("/api/users/me/", { location }).then(() => null, (e) => e) : null;
        form.reset();
        await startSession();
        if (unsaved) reportError(unsaved, "Location not saved: set it in your profile");
      } catch (error) {
        formError(form, error.code === "username_taken" ? { message: "That username is taken." } : error);
      }
    });
  });
}

/** Disable a form's submit button while `work` runs. */
async function busy(form, work) {
  const button = $("button[type=submit]", form);
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

async function startSession() {
  state.me = remember(await api.get("/api/users/me/"));
  $("#auth-view").hidden = true;
  $("#app-view").hidden = false;
  $("#me").hidden = false;
  renderMe();
  connectNotifications();
  pushToggle.start().catch(() => {});
  // The view the URL names (a reload comes back to it), Discover otherwise.
  const view = viewOfHash(location.hash);
  showPanel(view.panel === "chat" ? "discover" : view.panel, { record: view.panel !== "chat" });
  await Promise.all([loadMatches(), loadLikes()].map((p) => p.catch((e) => reportError(e))));
  if (view.panel === "chat") await showView(view);
  clearInterval(state.presenceTimer);
  state.presenceTimer = setInterval(refreshPresence, PRESENCE_POLL_MS);
}

function signOut(reason) {
  // Asked for (a reason means the server ended the session already): the server forgets it too.
  if (!reason && api.signedIn) api.endSession();
  closeChat();
  if (state.notifications) state.notifications.stop();
  state.notifications = null;
  state.lastNotificationId = null; // ids are per user: the next one to sign in starts afresh
  clearInterval(state.presenceTimer);
  pushToggle.stop();
  api.clearTokens();
  Object.assign(state, {
    me: null, people: new Map(), matches: new Map(), likes: [], candidates: [], discoverLoaded: false,
    discoverReadAt: 0, decided: new Set(), mutes: new Map(),
  });
  closeProfileDialog();
  matchMoment.reset();
  $("#app-view").hidden = true;
  $("#me").hidden = true;
  $("#auth-view").hidden = false;
  renderMatches();
  renderConnection();
  document.title = "Spark · Chat & Matching demo";
  // The next person to sign in here starts from Discover, not from this one's conversation.
  history.replaceState(null, "", location.pathname + location.search);
  if (reason) toast({ title: "Signed out", text: reason, kind: "error" });
  $("#signin-username").focus();
}

function retrySocketsNow() {
  for (const socket of [state.notifications, state.chat && state.chat.socket]) {
    if (socket) socket.retryNow();
  }
}

function renderMe() {
  fillAvatar($("#me-avatar"), state.me);
  $("#me-name").textContent = nameOf(state.me);
}

// =====================================================================================================
// The connection indicator: one pill for both sockets
// =====================================================================================================

let connectionTicker = null;

function renderConnection() {
  const box = $("#connection");
  const text = $("#connection-text");
  const sockets = [state.notifications, state.chat && state.chat.socket].filter(Boolean);
  let status = "signed-out";
  let label = "Signed out";
  if (api.signedIn && sockets.length) {
    const states = sockets.map((s) => s.state);
    const closed = states.find((s) => s.status === "closed" && s.code !== 4001);
    const waiting = states.filter((s) => s.status === "waiting").sort((a, b) => a.retryAt - b.retryAt)[0];
    if (closed) {
      status = "offline";
      label = `Disconnected: ${closed.reason || CLOSE_REASONS[closed.code] || closed.code}`;
    } else if (waiting) {
      status = "reconnecting";
      const seconds = Math.max(0, Math.ceil((waiting.retryAt - Date.now()) / 1000));
      label = seconds > 0 ? `Reconnecting in ${seconds} s…` : "Reconnecting…";
    } else if (states.some((s) => s.status === "connecting" || s.status === "idle")) {
      status = "connecting";
      label = "Connecting…";
    } else {
      status = "online";
      label = "Live";
    }
  }
  box.dataset.state = status;
  if (text.textContent !== label) text.textContent = label;
  $("#connection-retry").hidden = status !== "reconnecting";
  // While a retry is pending, count down.
  if (status === "reconnecting" && !connectionTicker) {
    connectionTicker = setInterval(renderConnection, 500);
  } else if (status !== "reconnecting" && connectionTicker) {
    clearInterval(connectionTicker);
    connectionTicker = null;
  }
}

// =====================================================================================================
// The notifications socket
// =====================================================================================================

function connectNotifications() {
  state.notifications = new ReconnectingSocket({
    name: "notifications",
    url: async () => {
      const params = { token: await api.freshAccessToken() };
      // The server replays what this page missed while it was away, none twice.
      if (state.lastNotificationId !== null) params.after = String(state.lastNotificationId);
      return socketUrl("/ws/notifications/", params);
    },
    onFrame: onNotification,
    onState: (s) => {
      renderConnection();
      // A deletion of one's own account closes the sockets 4002 too: that sign-out is the account panel's.
      if (s.status === "closed" && s.code === 4002 && !accountPanel.deleting) {
        signOut("Your session expired. Please sign in again.");
      }
    },
    onOpen: ({ reconnected }) => {
      // Without a place to resume from (nothing was notified before the cut), REST tells what changed.
      if (reconnected && state.lastNotificationId === null) reloadLists();
    },
  });
  state.notifications.start();
}

function reloadLists() {
  loadMatches().catch(() => {});
  loadLikes().catch(() => {});
}

// A replayed notification older than this updates the lists without a toast: news, not an alert.
// Arrivals within this long of each other are marked read with one receipt.
const READ_RECEIPT_DELAY_MS = 250;
const STALE_NOTIFICATION_MS = 30_000;

/**
 * `{"type": "notification", "id", "notification": {"type": ..., "timestamp", ...}}`, kinds: new_message,
 * new_match, new_like, match_ended, conversation_read; `{"type": "notifications_truncated"}` when some of
 * what was missed is no longer kept (then REST tells).
 */
function onNotification(frame) {
  if (frame.type === "notifications_truncated") {
    reloadLists();
    return;
  }
  if (frame.type !== "notification" || !frame.notification) return;
  if (typeof frame.id === "number") state.lastNotificationId = Math.max(state.lastNotificationId || 0, frame.id);
  const notification = frame.notification;
  const stale = Date.now() - Date.parse(notification.timestamp) > STALE_NOTIFICATION_MS;
  switch (notification.type) {
    case "new_message":
      onNewMessageNotification(notification.message, stale);
      break;
    case "new_match":
      onNewMatch(notification.match, stale);
      break;
    case "new_like":
      onNewLike(notification.liker, stale);
      break;
    case "match_ended":
      onMatchEnded(notification);
      break;
    case "conversation_read":
      onConversationRead(notification);
      break;
    default:
      break; // a newer server may add kinds: ignore what we do not know
  }
}

/** The match is gone (an unmatch or a block, by either person: the frame does not say): off the list. */
function onMatchEnded(ended) {
  if (state.matches.delete(ended.conversation_id)) renderMatches();
}

/** Read on another tab or device: no unread count here either. */
function onConversationRead(read) {
  const entry = state.matches.get(read.conversation_id);
  if (!entry || !entry.unread) return;
  const last = entry.lastMessage;
  if (!last || last.id <= read.message_id) {
    entry.unread = 0;
    renderMatches();
  }
}

// Messages counted by the toast of their conversation still on screen, by toast key.
const messageToastCounts = new Map();

function onNewMessageNotification(message, stale = false) {
  // {id, conversation_id, sender: {id, username, profile_picture}, content, created_at}
  const chat = state.chat;
  const watching = chat && chat.id === message.conversation_id && document.visibilityState === "visible";
  const entry = state.matches.get(message.conversation_id);
  if (entry) {
    entry.lastMessage = { ...message, sender_id: message.sender.id };
    entry.updatedAt = message.created_at;
    if (!watching) entry.unread += 1;
    renderMatches();
  } else {
    loadMatches().catch(() => {});
  }
  if (watching || stale || message.deleted) return; // shown already, old news, or unsent since
  // One toast per conversation: the next message replaces it and counts ("3 new messages from …").
  const key = `conversation-${message.conversation_id}`;
  // Counted on while its toast is on screen, or about to be (the sender's profile is still loading).
  let counter = messageToastCounts.get(key);
  if (!counter || (counter.pending === 0 && !toastShown(key))) {
    counter = { count: 0, pending: 0 };
    messageToastCounts.set(key, counter);
  }
  counter.count += 1;
  counter.pending += 1;
  const count = counter.count;
  // A profile that cannot be read leaves the name the notification carries.
  withProfile(message.sender).catch(() => message.sender).then((sender) => {
    counter.pending -= 1;
    if (counter.count !== count) return; // a later message of this conversation shows the count
    toast({
      title: count > 1 ? `${count} new messages from ${nameOf(sender)}` : `New message from ${nameOf(sender)}`,
      text: textOf(message),
      kind: "message",
      key,
      action: { label: "Open", run: () => openChat(message.conversation_id) },
    });
  });
}

function onNewMatch(match, stale = false) {
  // {id, user: {id, username, profile_picture}, created_at, conversation_id?}
  const user = remember(match.user);
  dismissToast(`like-${user.id}`); // "liked you" is old news once it is a match
  state.candidates = state.candidates.filter((c) => userOf(c).id !== user.id);
  state.likes = state.likes.filter((l) => userOf(l).id !== user.id);
  renderLikes();
  renderDiscover();
  const ready = Promise.all([loadMatches().catch(() => {}), withProfile(user)]);
  // In the order the matches came: each waits for its own reads and for the announcement before it, or
  // two matches of one moment could take the screen in whichever order their reads answered.
  matchAnnouncements = matchAnnouncements
    .then(() => ready)
    .then(() => {
      if (!stale) announceMatch(match.id, user);
    })
    .catch(() => {});
}

function announceMatch(matchId, user) {
  if (state.announcedMatches.has(matchId)) return; // the like's answer and the notification both say it
  state.announcedMatches.add(matchId);
  const entry = [...state.matches.values()].find((m) => m.user.id === user.id);
  matchMoment.show({ matchId, me: state.me, user: person(user.id), conversationId: entry ? entry.conversationId : null });
}

/** "Say hi" of a match: its conversation, ready to write in. */
async function sayHi(conversationId) {
  await openChat(conversationId);
  if (state.chat && state.chat.id === conversationId && !state.chat.closed) $("#composer-input").focus();
}

/** Where the focus goes after a match's dialog when what had it is gone (the card that was liked). */
function focusAfterMatch() {
  if (state.panel === "discover") focusDiscover("like");
  else if (state.panel === "chat") $("#composer-input").focus();
  else $(`.nav-item[data-panel="${state.panel}"]`)?.focus();
}

async function onNewLike(liker, stale = false) {
  loadLikes().catch(() => {});
  if (stale) return;
  const user = await withProfile(liker);
  toast({
    title: `${nameOf(user)} liked you`,
    text: "Like them back to start talking.",
    kind: "like",
    key: `like-${user.id}`,
    action: { label: "See", run: () => showPanel("likes") },
  });
}

// =====================================================================================================
// Panels
// =====================================================================================================

/** Show a panel; `record`: as a new entry of the browser's history (see "Views and the history"). */
function showPanel(name, { record = true } = {}) {
  if (name !== "chat") closeChat();
  state.panel = name;
  for (const panel of $$(".panel")) panel.hidden = panel.id !== `panel-${name}`;
  for (const item of $$(".nav-item")) {
    if (item.dataset.panel === name) item.setAttribute("aria-current", "page");
    else item.removeAttribute("aria-current");
  }
  $("#app-view").dataset.view = name === "chat" || name === "chats" ? name : "list";
  if (name === "profile") {
    fillProfileForm();
    photoEditor.load();
  }
  if (name === "settings") {
    settingsPanel.load();
    accountPanel.reset();
  }
  if (name === "discover" && !state.discoverLoaded) loadCandidates();
  else if (name === "discover") topUpIfStale();
  renderMatches();
  if (record) recordView(name);
}

// =====================================================================================================
// Views and the history: each panel and each open conversation is an entry of the browser's history
// (#discover, #chats, #likes, #profile, #settings, #chat/<id>), so Back and Forward move inside the app, and a
// reload comes back to the view it left.
// =====================================================================================================

const PANELS = new Set(["discover", "chats", "likes", "profile", "settings"]);

function viewHash(name) {
  return name === "chat" && state.chat ? `#chat/${state.chat.id}` : `#${name}`;
}

/** The view a URL's hash names, `{panel, conversation}`; Discover when it names none. */
function viewOfHash(hash) {
  const chat = /^#chat\/(\d+)$/.exec(hash);
  if (chat) return { panel: "chat", conversation: Number(chat[1]) };
  const name = hash.slice(1);
  return { panel: PANELS.has(name) ? name : "discover", conversation: null };
}

function recordView(name) {
  const hash = viewHash(name);
  if (location.hash === hash) return;
  // The first view after signing in replaces the entry: Back does not lead to a sign-in form.
  if (!location.hash) history.replaceState({ view: hash }, "", hash);
  else history.pushState({ view: hash }, "", hash);
}

/** Show the view a hash names without adding to the history (Back, Forward, a reload). */
async function showView(view) {
  if (view.panel === "chat" && view.conversation !== null) {
    await openChat(view.conversation, { record: false });
    if (!state.chat || state.chat.id !== view.conversation) showPanel("discover", { record: false });
  } else {
    showPanel(view.panel, { record: false });
  }
}

window.addEventListener("popstate", () => {
  if (api.signedIn) showView(viewOfHash(location.hash));
});

// =====================================================================================================
// Discover: one candidate at a time
// =====================================================================================================

/**
 * GET /api/discover/. A refusal is said in the card's place: a rate limit (DISCOVER_PER_10_MIN,
 * DISCOVER_PER_DAY) as "Slow down", counting down to a "Look again" button.
 */
async function loadCandidates() {
  try {
    const data = await api.get(`/api/discover/?limit=${DISCOVER_BATCH}`);
    state.candidates = listOf(data);
    state.discoverLoaded = true;
    state.discoverReadAt = Date.now();
    for (const c of state.candidates) remember(userOf(c));
    renderDiscover();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && !api.signedIn) return;
    state.candidates = [];
    renderDiscoverRefusal(error);
  }
}

/**
 * Read the first page again and take in whoever is not in the deck yet (newest first: people who signed
 * up meanwhile). They come right after the card on screen, which stays where it is. A failure is let
 * go: the deck goes on as it was, and the next top-up or "Look again" asks again.
 */
async function topUpCandidates() {
  if (state.toppingUp || !state.discoverLoaded || !api.signedIn) return;
  state.toppingUp = true;
  try {
    // Often the first call after a while away (a laptop that slept): renew a token that ran out first.
    await api.freshAccessToken();
    const data = await api.get(`/api/discover/?limit=${DISCOVER_BATCH}`);
    state.discoverReadAt = Date.now();
    const known = new Set(state.candidates.map((c) => userOf(c).id));
    const fresh = listOf(data).filter((c) => !known.has(userOf(c).id) && !state.decided.has(userOf(c).id));
    if (!fresh.length) return;
    for (const c of fresh) remember(userOf(c));
    const [current, ...rest] = state.candidates;
    state.candidates = current ? [current, ...fresh, ...rest] : fresh;
    if (!current && state.panel === "discover") renderDiscover();
  } catch {
    // Nothing to say: this read was extra.
  } finally {
    state.toppingUp = false;
  }
}

/** Back on Discover (or on the page) after a while: look for people who are new since. */
function topUpIfStale() {
  if (state.discoverLoaded && Date.now() - state.discoverReadAt > DISCOVER_STALE_MS) topUpCandidates();
}

function renderDiscoverRefusal(error) {
  const stage = $("#discover-stage");
  const again = h("button", { type: "button", class: "button button-secondary", onclick: () => loadCandidates() }, "Look again");
  const line = h("p", { class: "empty-title slow-down", role: "alert" });
  const why = isRateLimited(error)
    ? h("p", { class: "empty" }, "Everyone can look only so often, so that nobody can collect profiles in bulk.")
    : null;
  stage.replaceChildren(h("div", { class: "card empty-card discover-refused" }, line, why, again));
  if (isRateLimited(error)) {
    again.disabled = true;
    countDown(line, retryAfterMs(error), {
      onDone: () => {
        line.textContent = "You can look again now.";
        again.disabled = false;
      },
    });
  } else {
    line.textContent = friendlyText(error, "Could not load people to discover.");
  }
}

/** `distance_km` is a coarse bucket (1, 2, 3, 5, 10 … km) between two coarse locations: an upper bound. */
function distanceText(km) {
  return `within ${km} km`;
}

function describe(user, { withAge = true } = {}) {
  const parts = [];
  if (withAge && user.age) parts.push(`${user.age}`);
  if (user.gender) parts.push({ man: "Man", woman: "Woman", nonbinary: "Nonbinary" }[user.gender] || user.gender);
  if (typeof user.distance_km === "number") parts.push(distanceText(user.distance_km));
  return parts.join(" · ");
}

function renderDiscover() {
  const stage = $("#discover-stage");
  stopCountDown($(".slow-down", stage) || stage);
  const candidate = state.candidates[0];
  if (!state.discoverLoaded) {
    stage.replaceChildren(h("p", { class: "empty" }, "Looking for people…"));
    return;
  }
  if (!candidate) {
    stage.replaceChildren(
      h(
        "div",
        { class: "card empty-card" },
        h("p", { class: "empty-title" }, "That’s everyone for now"),
        h("p", { class: "empty" }, "New people appear as they sign up. Check your profile’s preferences, or look again."),
        // The server's age filter (docs/matching.md): without a birth date one fits nobody's age range.
        state.me && !state.me.birthdate
          ? h("p", { class: "empty no-birthdate" }, "Without a birth date in your profile, you see only people who set no age range, and only they see you.")
          : null,
        h("button", { type: "button", class: "button button-secondary", onclick: () => loadCandidates() }, "Look again"),
      ),
    );
    return;
  }
  const user = userOf(candidate);
  const label = `${nameOf(user)}${user.age ? `, ${user.age}` : ""}`;
  const photo = photoCarousel(user, { className: "candidate-photo" });
  stage.replaceChildren(
    h(
      "article",
      { class: "card candidate", "aria-label": label, dataset: { userId: user.id } },
      photo,
      h(
        "div",
        { class: "candidate-info" },
        h(
          "div",
          { class: "candidate-head" },
          h("h3", { class: "candidate-name" }, nameOf(user), user.age ? h("span", { class: "candidate-age" }, ` ${user.age}`) : null),
          h(
            "button",
            { type: "button", class: "button button-small button-quiet report-link", "aria-label": `Report ${nameOf(user)}`, onclick: () => reportUser(user) },
            "Report",
          ),
        ),
        h("p", { class: "candidate-meta" }, describe(user, { withAge: false }) || `@${user.username}`),
        user.bio ? h("p", { class: "candidate-bio" }, user.bio) : null,
      ),
      h(
        "div",
        { class: "candidate-actions" },
        h("button", { type: "button", class: "button button-round button-pass", "aria-label": `Pass on ${nameOf(user)}`, onclick: () => decide(user, "pass") }, h("span", { "aria-hidden": "true" }, "✕"), " Pass"),
        h("button", { type: "button", class: "button button-round button-like", "aria-label": `Like ${nameOf(user)}`, onclick: () => decide(user, "like") }, h("span", { "aria-hidden": "true" }, "♥"), " Like"),
      ),
    ),
  );
}

/** POST /api/likes/ or /api/passes/ {user_id}; a like may answer with the match it completed. */
async function decide(user, kind) {
  // Read before the buttons are disabled, which drops the focus to the page's body.
  const fromDiscover = $("#discover-stage").contains(document.activeElement);
  for (const b of $$("#discover-stage button, #likes-list button")) b.disabled = true;
  try {
    let match = null;
    if (kind === "like") {
      const result = await api.post("/api/likes/", { user_id: user.id });
      match = result && result.match;
      if (match) await loadMatches();
    } else {
      await api.post("/api/passes/", { user_id: user.id });
    }
    await moveOnFrom(user);
    if (fromDiscover) focusDiscover(kind);
    // After moving on: the match's dialog gives the focus back to the next card.
    if (match) announceMatch(match.id, user);
  } catch (error) {
    if (error.status === 404) {
      // They blocked you, deleted their account or were banned since the card was shown: the server
      // says only "not found", and so does the page, then shows the next person.
      toast({ title: "No longer available", text: `${nameOf(user)} can no longer be seen.` });
      await moveOnFrom(user).catch((e) => reportError(e));
      if (fromDiscover) focusDiscover(kind);
      return;
    }
    reportError(error, kind === "like" ? "Could not like" : "Could not pass");
    renderDiscover();
    renderLikes();
  }
}

/** Keyboard users keep their place: the same button on the next card, or "Look again" past the last. */
function focusDiscover(kind) {
  const stage = $("#discover-stage");
  const next = $(kind === "like" ? ".button-like" : ".button-pass", stage) || $("button", stage);
  if (next) next.focus();
}

/** Take `user` off Discover and Liked you, and show who comes next. */
async function moveOnFrom(user) {
  state.decided.add(user.id);
  state.candidates = state.candidates.filter((c) => userOf(c).id !== user.id);
  state.likes = state.likes.filter((l) => userOf(l).id !== user.id);
  renderLikes();
  if (state.candidates.length === 0) {
    await loadCandidates();
    return;
  }
  renderDiscover();
  if (state.candidates.length <= DISCOVER_TOP_UP_AT) topUpCandidates();
}

// =====================================================================================================
// Liked you
// =====================================================================================================

async function loadLikes() {
  // [{user: {id, username, profile_picture}, liked_at}]: the full profiles come from GET /api/users/<id>/.
  state.likes = listOf(await api.get("/api/likes/received/"));
  for (const like of state.likes) remember(userOf(like));
  renderLikes();
  const missing = state.likes.map(userOf).filter((u) => person(u.id).display_name === undefined);
  await Promise.all(missing.map((u) => api.get(`/api/users/${u.id}/`).then(remember, () => {})));
  if (missing.length) renderLikes();
}

function renderLikes() {
  const list = $("#likes-list");
  list.replaceChildren(
    ...state.likes.map((like) => {
      const user = person(userOf(like).id);
      return h(
        "li",
        { class: "person card", dataset: { userId: user.id } },
        h(
          "button",
          { type: "button", class: "person-photo", "aria-label": `View ${nameOf(user)}’s profile`, onclick: () => openProfile(user.id) },
          avatar(user, "lg"),
        ),
        h(
          "div",
          { class: "person-info" },
          h("p", { class: "person-name" }, nameOf(user)),
          h("p", { class: "person-meta" }, describe(user) || `@${user.username}`),
          user.bio ? h("p", { class: "person-bio" }, user.bio) : null,
        ),
        h(
          "div",
          { class: "person-actions" },
          h("button", { type: "button", class: "button button-quiet", onclick: () => decide(user, "pass") }, "Pass"),
          h("button", { type: "button", class: "button button-primary", onclick: () => decide(user, "like") }, "Like back"),
        ),
      );
    }),
  );
  $("#likes-empty").hidden = state.likes.length > 0;
  const badge = $("#likes-badge");
  badge.hidden = state.likes.length === 0;
  badge.textContent = String(state.likes.length);
  badge.setAttribute("aria-label", `${state.likes.length} new`);
}

// =====================================================================================================
// Matches: the sidebar list, with online dots and unread counts
// =====================================================================================================

/** GET /api/matches/ and GET /api/conversations/ (last message, unread count), joined by conversation. */
async function loadMatches() {
  const [matches, conversations] = await Promise.all([
    api.get("/api/matches/").then(listOf),
    api.get("/api/conversations/").then(listOf),
  ]);
  const next = new Map();
  const matchByConversation = new Map(matches.map((m) => [m.conversation_id, m]));
  rememberMutes(conversations);
  for (const c of conversations) {
    if (c.status && c.status !== "open") continue;
    const other = c.participants.find((p) => p.id !== state.me.id);
    if (!other) continue;
    const match = matchByConversation.get(c.id);
    next.set(c.id, {
      conversationId: c.id,
      matchId: c.match_id || (match && match.id),
      user: remember(other),
      lastMessage: c.last_message,
      unread: c.unread_count || 0,
      updatedAt: c.updated_at || (match && match.created_at),
    });
  }
  for (const m of matches) {
    if (!m.conversation_id || next.has(m.conversation_id)) continue;
    next.set(m.conversation_id, {
      conversationId: m.conversation_id,
      matchId: m.id,
      user: remember(m.user),
      lastMessage: null,
      unread: 0,
      updatedAt: m.created_at,
    });
  }
  // The open conversation is read as it arrives.
  if (state.chat && next.has(state.chat.id)) next.get(state.chat.id).unread = 0;
  state.matches = next;
  renderMatches();
  refreshPresence();
  if (state.chat) state.chat.renderMute();
}

// -- mutes ------------------------------------------------------------------------------------------

/** The own mute of each conversation, as GET /api/conversations/ says it (`muted`, `muted_until`). */
function rememberMutes(conversations) {
  for (const c of conversations) {
    if (typeof c.muted === "boolean") {
      state.mutes.set(c.id, { conversation_id: c.id, muted: c.muted, muted_until: c.muted_until || null });
    }
  }
}

/** Whether the user muted a conversation (a timed mute ends by itself, here as on the server). */
function isMuted(conversationId) {
  const mute = state.mutes.get(conversationId);
  if (!mute || !mute.muted) return false;
  return !mute.muted_until || Date.parse(mute.muted_until) > Date.now();
}

/** "until 18:30", "until tomorrow 09:00", "until 3 May"; "" when muted until unmuted. */
function muteEndText(mute) {
  if (!mute || !mute.muted_until) return "";
  const end = new Date(mute.muted_until);
  const days = (end - Date.now()) / 86_400_000;
  if (days < 1 && end.getDate() === new Date().getDate()) return `until ${clockTime(mute.muted_until)}`;
  if (days < 2) return `until tomorrow ${clockTime(mute.muted_until)}`;
  return `until ${shortTime(mute.muted_until)}`;
}

/** PUT /api/conversations/<id>/mute/ {until} (null: until unmuted), or DELETE to unmute. */
async function setMute(conversationId, ms) {
  try {
    if (ms === undefined) {
      await api.delete(`/api/conversations/${conversationId}/mute/`);
      state.mutes.set(conversationId, { conversation_id: conversationId, muted: false, muted_until: null });
    } else {
      const until = ms === null ? null : new Date(Date.now() + ms).toISOString();
      state.mutes.set(conversationId, await api.put(`/api/conversations/${conversationId}/mute/`, { until }));
    }
  } catch (error) {
    reportError(error, "Could not change the mute");
    return;
  }
  renderMatches();
  if (state.chat && state.chat.id === conversationId) state.chat.renderMute();
  const name = nameOf(person(state.matches.get(conversationId)?.user.id));
  toast({
    title: isMuted(conversationId) ? `Muted ${name}` : `Unmuted ${name}`,
    text: isMuted(conversationId) ? "No notifications from this conversation. Messages still arrive." : "",
    kind: "info",
    timeoutMs: 3000,
  });
}

/**
 * A muted conversation sends no `new_message` notification, so the sidebar hears of its messages from
 * the conversation list: re-read on the presence poll while something is muted.
 */
async function refreshConversations() {
  const conversations = listOf(await api.get("/api/conversations/"));
  rememberMutes(conversations);
  for (const c of conversations) {
    const entry = state.matches.get(c.id);
    if (!entry) continue;
    entry.lastMessage = c.last_message;
    entry.updatedAt = c.updated_at || entry.updatedAt;
    entry.unread = state.chat && state.chat.id === c.id ? 0 : c.unread_count || 0;
  }
  renderMatches();
  if (state.chat) state.chat.renderMute();
}

/**
 * Online dots for the list. Live `status` frames come only on a conversation socket, and the page keeps
 * one open (the one on screen), so the others are read from GET /api/users/<id>/, which carries
 * `status` and `last_seen` for people we share an open conversation with.
 */
async function refreshPresence() {
  if ([...state.matches.keys()].some(isMuted)) refreshConversations().catch(() => {});
  const ids = [...state.matches.values()].map((m) => m.user.id);
  await Promise.all(
    ids.map((id) =>
      api
        .get(`/api/users/${id}/`)
        .then((profile) => {
          // The open conversation's live frames are fresher than a poll that crossed them.
          if (state.chat && state.chat.other.id === id && state.chat.liveStatus) {
            delete profile.status;
            delete profile.last_seen;
          }
          remember(profile);
        })
        .catch(() => {}),
    ),
  );
  renderMatches();
  if (state.chat) state.chat.renderHeader();
}

// Each conversation's list item, kept across renders: the list is rendered again at every status frame,
// message and notification, and a button replaced between a press and its release takes no click.
const matchItems = new Map();

/** The list item of this conversation, showing `shown` (a button built anew) without replacing what is the same. */
function matchItem(conversationId, shown) {
  let item = matchItems.get(conversationId);
  if (!item) {
    item = h("li", {}, h("button", { type: "button", onclick: () => openChat(conversationId) }));
    matchItems.set(conversationId, item);
  }
  const button = item.firstChild;
  if (!button.isEqualNode(shown)) {
    for (const name of button.getAttributeNames()) if (!shown.hasAttribute(name)) button.removeAttribute(name);
    for (const name of shown.getAttributeNames()) button.setAttribute(name, shown.getAttribute(name));
    button.replaceChildren(...shown.childNodes);
  }
  return item;
}

function renderMatches() {
  const entries = [...state.matches.values()].sort((a, b) => String(b.updatedAt).localeCompare(String(a.updatedAt)));
  const list = $("#match-list");
  for (const id of [...matchItems.keys()]) if (!state.matches.has(id)) matchItems.delete(id);
  const items = entries.map((entry) => {
    const user = person(entry.user.id);
    const status = user.status || "unknown";
    const last = entry.lastMessage;
    const preview = last ? previewOf(last) : "New match: say hi!";
    const muted = isMuted(entry.conversationId);
    const unread = entry.unread > 0 ? h("span", { class: "badge", "aria-hidden": "true" }, String(entry.unread)) : null;
    // Said after the name, not in place of what the button shows (its name has to contain its text).
    const states = [
      status === "online" ? "online" : null,
      muted ? "muted" : null,
      entry.unread ? `${entry.unread} unread` : null,
    ].filter(Boolean);
    const spoken = states.length ? `, ${states.join(", ")}` : "";
    const open = state.chat && state.chat.id === entry.conversationId;
    return matchItem(
      entry.conversationId,
      h(
        "button",
        {
          type: "button",
          class: `match${entry.unread ? " has-unread" : ""}`,
          "aria-current": open ? "true" : null,
          dataset: { conversationId: entry.conversationId, userId: user.id, status, muted: String(muted) },
        },
        h("span", { class: "avatar-wrap" }, avatar(user, "md"), h("span", { class: "presence-dot", dataset: { status } })),
        h(
          "span",
          { class: "match-text" },
          h(
            "span",
            { class: "match-name" },
            h("span", { class: "match-name-text" }, nameOf(user)),
            spoken ? h("span", { class: "visually-hidden" }, spoken) : null,
            muted ? mutedIcon() : null,
          ),
          h("span", { class: "match-preview" }, preview),
        ),
        h("span", { class: "match-meta" }, h("span", { class: "match-time" }, shortTime(last ? last.created_at : entry.updatedAt)), unread),
      ),
    );
  });
  const current = [...list.children];
  if (current.length !== items.length || current.some((item, i) => item !== items[i])) list.replaceChildren(...items);
  $("#match-empty").hidden = entries.length > 0;
  const unread = entries.reduce((sum, e) => sum + e.unread, 0);
  document.title = `${unread ? `(${unread}) ` : ""}Spark · Chat & Matching demo`;
  renderChatsBadge(unread);
}

/** A list line for a message: its text, its attachment ("Photo", "File: <its name>"), or that it was unsent. */
function previewOf(message) {
  const own = message.sender_id === state.me.id;
  if (message.deleted) return own ? "You unsent a message" : "Message unsent";
  return `${own ? "You: " : ""}${textOf(message)}`;
}

function textOf(message) {
  return message.content || (message.attachment ? attachmentLabel(message.attachment) : "");
}

/** The crossed-out bell beside the name of a muted conversation. */
function mutedIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("class", "muted-icon");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute(
    "d",
    "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6v-5a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66c-.9.2-1.72.57-2.45 1.08L19 16.18zM3.4 2.6 2 4l3.3 3.3A7 7 0 0 0 5 9v7l-2 2v1h14.2l2.8 2.8 1.4-1.4z",
  );
  svg.append(path);
  const title = document.createElementNS(ns, "title");
  title.textContent = "Muted";
  svg.prepend(title);
  return svg;
}

// =====================================================================================================
// Profile
// =====================================================================================================

function fillProfileForm() {
  const form = $("#profile-form");
  const me = state.me;
  clearFormError(form);
  form.elements.display_name.value = me.display_name || "";
  form.elements.birthdate.value = me.birthdate || "";
  form.elements.gender.value = me.gender || "woman";
  for (const box of form.querySelectorAll("input[name=interested_in]")) {
    box.checked = (me.interested_in || []).includes(box.value);
  }
  form.elements.age_min.value = me.age_min ?? "";
  form.elements.age_max.value = me.age_max ?? "";
  form.elements.bio.value = me.bio || "";
  renderLocation();
}

function renderLocation() {
  const shared = Boolean(state.me && state.me.location);
  $("#location-state").replaceChildren(
    ...(shared
      ? [h("strong", {}, "Shared, approximately."), " People you discover see a distance like “within 5 km”."]
      : [h("strong", {}, "Not shared."), " Nobody sees a distance to you, and you see none to them."]),
  );
  $("#location-use").textContent = shared ? "Update my location" : "Use my location";
  $("#location-clear").hidden = !shared;
}

/** One status line under a control: a rate limit counts down there, anything else is said once. */
function controlStatus(el, error, text = "") {
  stopCountDown(el);
  if (error && isRateLimited(error)) {
    el.hidden = false;
    countDown(el, retryAfterMs(error), { onDone: () => (el.hidden = true) });
    return;
  }
  el.textContent = error ? friendlyText(error) : text;
  el.hidden = !el.textContent;
}

/**
 * PATCH /api/users/me/ {location}. The browser's position goes to the server once; only a coarse point
 * is stored (LOCATION_CHANGES_PER_DAY changes a day, then 429).
 */
async function shareLocation(location) {
  const status = $("#location-status");
  try {
    state.me = remember(await api.patch("/api/users/me/", { location }));
    controlStatus(status, null);
    renderLocation();
    state.discoverLoaded = false; // distances (and who is near enough) changed
    toast({ title: location ? "Location saved" : "Location removed", kind: "info", timeoutMs: 3000 });
  } catch (error) {
    controlStatus(status, error);
  }
}

async function useMyLocation() {
  const status = $("#location-status");
  controlStatus(status, null, "Finding where you are…");
  let location;
  try {
    location = await currentPosition();
  } catch (failure) {
    controlStatus(status, null, failure.message);
    return;
  }
  await shareLocation(location);
}

/** A city picked by hand (location.js) in place of the browser's position. */
async function useCity() {
  const location = cityLocation($("#location-city").value);
  if (!location) {
    controlStatus($("#location-status"), null, "Choose a city first.");
    return;
  }
  await shareLocation(location);
}

function setupProfile() {
  const form = $("#profile-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFormError(form);
    const data = new FormData(form);
    const number = (name) => (data.get(name) === "" ? null : Number(data.get(name)));
    // PATCH /api/users/me/: null clears a field.
    const changes = {
      display_name: String(data.get("display_name")).trim() || null,
      birthdate: data.get("birthdate") || null,
      gender: data.get("gender"),
      interested_in: data.getAll("interested_in"),
      age_min: number("age_min"),
      age_max: number("age_max"),
      bio: String(data.get("bio")).trim() || null,
    };
    await busy(form, async () => {
      try {
        state.me = remember(await api.patch("/api/users/me/", changes));
        renderMe();
        toast({ title: "Profile saved", kind: "info", timeoutMs: 3000 });
        state.discoverLoaded = false; // preferences may have changed who shows up
      } catch (error) {
        formError(form, error);
      }
    });
  });

  // The photos: the first is the picture everyone sees in lists, frames and the top bar.
  photoEditor = new PhotoEditor(api, $("#photo-editor"), {
    notify: toast,
    onChange: (photos) => {
      state.me = remember({ ...state.me, photos: photos.map((p) => p.url), profile_picture: photos[0] ? photos[0].url : null });
      renderMe();
    },
  });
  $("#location-use").addEventListener("click", useMyLocation);
  fillCities($("#location-city"));
  $("#location-city-use").addEventListener("click", useCity);
  $("#location-clear").addEventListener("click", () => shareLocation(null));
}

// =====================================================================================================
// A conversation
// =====================================================================================================

/**
 * Whether `next` is a later state of the message shown as `shown`: an unsend is final, and of two edits
 * the later `edited_at` wins (a PATCH's answer may arrive after the frame of a newer change).
 */
function changedSince(shown, next) {
  if (shown.deleted) return false;
  if (next.deleted) return true;
  return (next.edited_at || "") > (shown.edited_at || "");
}

function newClientId() {
  // crypto.randomUUID exists only in secure contexts (https, localhost); a LAN address over http is not one.
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

class Chat {
  constructor(entry) {
    this.id = entry.conversationId;
    this.matchId = entry.matchId;
    this.other = entry.user;
    this.messages = new Map(); // message id -> {message, el}: the dedupe table (ids are per conversation)
    this.pending = new Map(); // client_id -> {content, el}: sent, not yet echoed back
    this.lastId = 0; // highest message id seen: the `?after=` of the next (re)connect
    this.firstId = null; // lowest loaded: the `?before=` of the next history page
    this.hasMore = false;
    this.loadingOlder = false;
    this.theirsUpTo = 0; // highest id of a message from them
    this.readSent = 0; // highest id we reported read
    this.readTimer = null; // a pending markRead of a burst of arrivals
    this.readByThemUpTo = 0; // highest of our ids they have read
    this.typingSent = false;
    this.typingSentAt = 0;
    this.typingIdle = null;
    this.theirTyping = null;
    this.liveStatus = false; // a status frame arrived on this socket
    this.editing = null; // id of the own message the composer is editing, if any
    this.draft = ""; // what the composer held when an edit began, given back when it ends
    this.socket = null;
    this.closed = false;
    this.scroll = $("#chat-scroll");
    this.list = $("#messages");
  }

  get ownId() {
    return state.me.id;
  }

  async open() {
    this.list.replaceChildren();
    $("#panel-chat").dataset.socket = "idle";
    $("#typing").textContent = "";
    $("#chat-banner").hidden = true;
    $("#jump-latest").hidden = true;
    this.setComposerEnabled(true);
    this.renderHeader();
    this.renderMute();
    $("#history-state").textContent = "Loading messages…";
    // 1. The latest page over REST.
    const page = await api.get(`/api/conversations/${this.id}/messages/?limit=${HISTORY_PAGE}`);
    if (state.chat !== this) return;
    this.addOlder(page.results, page.has_more);
    this.scrollToBottom();
    // 2. Then the socket, asking for everything after the newest message we have: a message stored
    //    between the REST answer and the socket opening is replayed, not lost.
    this.socket = new ReconnectingSocket({
      name: `conversation ${this.id}`,
      url: async () =>
        socketUrl(`/ws/conversations/${this.id}/`, {
          token: await api.freshAccessToken(),
          after: String(this.lastId),
        }),
      onFrame: (frame) => this.onFrame(frame),
      onState: (s) => this.onSocketState(s),
      onOpen: () => this.onSocketOpen(),
    });
    this.socket.start();
    this.markRead();
    await this.fillViewport();
  }

  close() {
    clearTimeout(this.readTimer);
    this.stopTyping();
    this.stopEditing();
    closeMenu();
    clearTimeout(this.theirTyping);
    if (this.socket) this.socket.stop();
    this.socket = null;
  }

  // -- frames from the server --------------------------------------------------------------------

  onFrame(frame) {
    switch (frame.type) {
      case "message": // {message: {id, sender_id, sender_username, content, created_at, is_read, ...}}
        this.onMessage(frame.message);
        break;
      case "typing": // {user_id, username, is_typing}
        if (frame.user_id !== this.ownId) this.showTheirTyping(frame.is_typing);
        break;
      case "read_receipt": // {message_id, user_id, username, timestamp}: read up to message_id
        if (frame.user_id !== this.ownId) this.markOwnRead(frame.message_id);
        break;
      case "message_edited": // {event_id, message_id, message: the message as it now is}
      case "message_deleted": // the same, `message` being the placeholder (deleted: true)
        this.onLifecycle(frame);
        break;
      case "status": // {user_id, username, status: "online" | "offline", timestamp}
        if (frame.user_id === this.other.id) {
          this.liveStatus = true;
          const online = frame.status === "online";
          remember({ id: frame.user_id, status: frame.status, last_seen: online ? null : frame.timestamp });
          this.renderHeader();
          renderMatches();
        }
        break;
      case "error": // {code, message, client_id?}: refused, the socket stays open
        this.onError(frame);
        break;
      default:
        break; // "pong", or kinds a newer server adds
    }
  }

  onMessage(message) {
    const fresh = this.add(message);
    if (!fresh) return;
    this.renderHistoryState();
    const entry = state.matches.get(this.id);
    if (entry) {
      entry.lastMessage = message;
      entry.updatedAt = message.created_at;
      renderMatches();
    }
    if (message.sender_id !== this.ownId) {
      this.showTheirTyping(false);
      this.markReadSoon();
    }
    if (message.sender_id === this.ownId || this.nearBottom()) this.scrollToBottom();
    else $("#jump-latest").hidden = false;
  }

  /**
   * An edit or an unsend: it takes the conversation's next id (`event_id`), which counts for `?after=`
   * like a message's, and carries the message as it now is, which replaces the copy shown.
   */
  onLifecycle(frame) {
    this.lastId = Math.max(this.lastId, frame.event_id || 0);
    const message = frame.message;
    if (!message) return;
    const item = this.messages.get(message.id);
    if (item && changedSince(item.message, message)) this.update(item, message);
    const entry = state.matches.get(this.id);
    if (entry && entry.lastMessage && entry.lastMessage.id === message.id && changedSince(entry.lastMessage, message)) {
      entry.lastMessage = message;
      renderMatches();
    }
    if (this.editing === message.id && message.deleted) this.stopEditing();
  }

  onError(frame) {
    const pending = frame.client_id && this.pending.get(frame.client_id);
    if (pending) {
      this.failPending(frame.client_id, frame);
      if (isRateLimited(frame)) return; // the bubble says it, counting down
    }
    if (isRateLimited(frame)) toast({ title: slowDownText(retryAfterMs(frame)), kind: "error" });
    else toast({ title: "Not sent", text: friendlyText(frame), kind: "error" });
  }

  onSocketOpen() {
    $("#chat-banner").hidden = true;
    // Messages sent but never echoed (the socket dropped first) go again with the same client_id: the
    // server stores a client_id once, so a message that did get through is not duplicated.
    for (const [clientId, item] of this.pending) {
      if (!item.failed) this.socket.send(messageFrame(item.content, item.attachment, clientId));
    }
    this.markRead();
  }

  onSocketState(s) {
    // The socket's state on the panel: "open" once frames flow (tests wait for it before typing).
    $("#panel-chat").dataset.socket = s.status;
    renderConnection();
    this.renderHeader();
    const banner = $("#chat-banner");
    if (s.status === "waiting") {
      banner.hidden = false;
      banner.dataset.kind = "warning";
      banner.textContent = "Connection lost. Reconnecting… messages sent meanwhile will show up.";
    } else if (s.status === "closed") {
      banner.hidden = false;
      banner.dataset.kind = "error";
      if (s.code === 4001) {
        banner.textContent = "This conversation is closed.";
        this.closed = true;
        this.setComposerEnabled(false);
        this.showTheirTyping(false);
        this.renderHeader();
        loadMatches().catch(() => {});
      } else if (s.code === 4002) {
        banner.textContent = "Your session expired.";
      } else {
        banner.textContent = `Disconnected: ${s.reason}.`;
      }
    }
  }

  // -- the message list ---------------------------------------------------------------------------

  /** Add one message in id order; false when that id is already shown (a replay after reconnect). */
  add(message) {
    const known = this.messages.get(message.id);
    if (known) {
      // A replay or a later page may show it changed since (edited, unsent, read).
      if (changedSince(known.message, message)) this.update(known, message);
      else if (message.is_read && !known.message.is_read) this.setRead(known, true);
      return false;
    }
    const own = message.sender_id === this.ownId;
    if (own && message.client_id && this.pending.has(message.client_id)) {
      this.pending.get(message.client_id).el.remove();
      this.pending.delete(message.client_id);
    }
    if (own && message.id <= this.readByThemUpTo) message.is_read = true;
    const el = this.renderMessage(message);
    const item = { message, el };
    // Usually the newest: it goes after the last confirmed message, before the pending ones.
    let anchor = this.list.querySelector("li.pending");
    const confirmed = $$("li[data-id]", this.list);
    const newest = confirmed[confirmed.length - 1];
    if (newest && Number(newest.dataset.id) > message.id) {
      anchor = confirmed.find((li) => Number(li.dataset.id) > message.id);
    }
    this.list.insertBefore(el, anchor);
    this.messages.set(message.id, item);
    this.lastId = Math.max(this.lastId, message.id);
    this.firstId = this.firstId === null ? message.id : Math.min(this.firstId, message.id);
    if (!own) this.theirsUpTo = Math.max(this.theirsUpTo, message.id);
    this.regroup(el);
    if (el.nextElementSibling) this.regroup(el.nextElementSibling);
    return true;
  }

  /** A page of older history (oldest first), placed above what is shown. */
  addOlder(messages, hasMore) {
    for (const message of messages) this.add(message);
    this.hasMore = hasMore;
    this.renderHistoryState();
  }

  renderHistoryState() {
    const name = nameOf(person(this.other.id));
    let text = `You matched with ${name}. Say hi!`;
    if (this.hasMore) text = "Scroll up for earlier messages";
    else if (this.messages.size) text = `This is the beginning of your conversation with ${name}.`;
    const line = $("#history-state");
    if (line.textContent !== text) line.textContent = text;
  }

  renderMessage(message) {
    const own = message.sender_id === this.ownId;
    const attachment = message.attachment;
    const classes = ["message", own ? "own" : "theirs"];
    if (message.deleted) classes.push("deleted");
    if (this.editing === message.id) classes.push("editing");
    const who = own ? null : h("span", { class: "visually-hidden" }, `${nameOf(person(message.sender_id))}: `);
    const time = h("time", { datetime: message.created_at }, clockTime(message.created_at));
    const bubble = message.deleted
      ? h(
          "div",
          { class: "bubble" },
          who,
          h("p", { class: "text unsent-text" }, own ? "You unsent a message" : "This message was unsent"),
          h("span", { class: "meta" }, time),
        )
      : h(
          "div",
          { class: "bubble" },
          who,
          message.content ? h("p", { class: "text" }, message.content) : null,
          attachment ? attachmentView(attachment) : null,
          h(
            "span",
            { class: "meta" },
            message.edited_at
              ? h("span", { class: "edited", title: `Edited ${relativeTime(message.edited_at)}` }, "edited")
              : null,
            time,
            own ? this.ticks(message.is_read) : null,
          ),
        );
    return h(
      "li",
      {
        class: classes.join(" "),
        dataset: { id: message.id, sender: message.sender_id, time: message.created_at },
      },
      own && !message.deleted && !this.closed ? this.menuButton(message) : null,
      bubble,
    );
  }

  /** The "⋯" beside an own message: Edit (within the edit window) and Unsend. */
  menuButton(message) {
    const button = h(
      "button",
      {
        type: "button",
        class: "message-menu-button",
        "aria-label": "Message actions",
        "aria-haspopup": "menu",
        "aria-expanded": "false",
      },
      "⋯",
    );
    const anchor = h("span", { class: "menu-anchor message-menu" }, button);
    button.addEventListener("click", () => {
      if (menuOpenFor(button)) {
        closeMenu();
        return;
      }
      const item = this.messages.get(message.id);
      if (!item || item.message.deleted) return;
      const current = item.message;
      const items = [];
      if (Date.now() - Date.parse(current.created_at) < EDIT_WINDOW_MS) {
        items.push({ label: "Edit", run: () => this.startEditing(current.id) });
      }
      items.push({ label: "Unsend", danger: true, run: () => this.unsend(current.id) });
      // Open upwards when there is no room below inside the scrolling list.
      const room = this.scroll.getBoundingClientRect().bottom - button.getBoundingClientRect().bottom;
      openMenu(button, items, { label: "Message actions", placeAbove: room < 110 });
    });
    return anchor;
  }

  /** Ids of the messages the other person sent and did not unsend, oldest first (what a report may name). */
  theirMessageIds() {
    return [...this.messages.values()]
      .map((item) => item.message)
      .filter((m) => m.sender_id === this.other.id && !m.deleted)
      .map((m) => m.id)
      .sort((a, b) => a - b);
  }

  /** Show `message` (a later state of `item`'s) in place: edited, unsent, read. */
  update(item, message) {
    const wasNewest = this.nearBottom();
    item.message = { ...item.message, ...message };
    if (message.deleted) {
      delete item.message.edited_at;
      item.message.content = "";
      item.message.attachment = null;
    }
    if (item.message.sender_id === this.ownId && item.message.id <= this.readByThemUpTo) item.message.is_read = true;
    const el = this.renderMessage(item.message);
    if (item.el.contains(document.activeElement)) closeMenu();
    item.el.replaceWith(el);
    item.el = el;
    this.regroup(el);
    if (el.nextElementSibling) this.regroup(el.nextElementSibling);
    if (wasNewest) this.scrollToBottom();
  }

  ticks(read) {
    return h(
      "span",
      { class: "ticks", dataset: { read: String(Boolean(read)) }, "aria-label": read ? "Read" : "Sent", title: read ? "Read" : "Sent" },
      read ? "✓✓" : "✓",
    );
  }

  setRead(item, read) {
    item.message.is_read = read;
    const old = item.el.querySelector(".ticks");
    if (old) old.replaceWith(this.ticks(read));
  }

  // -- editing and unsending ------------------------------------------------------------------------
  //
  // Both go over REST (PATCH and DELETE /api/conversations/<id>/messages/<message_id>/) rather than as
  // `edit` / `unsend` frames: a refusal then answers the very request, while an `error` frame does not
  // say which message it is about. The server broadcasts the change to every socket of the
  // conversation (`message_edited`, `message_deleted`), this page's included, which is what updates it.

  /** Edit in the composer: it takes the message's text, and a bar above it says so (Escape leaves). */
  startEditing(messageId) {
    const item = this.messages.get(messageId);
    if (!item || item.message.deleted) return;
    this.stopEditing();
    this.editing = messageId;
    item.el.classList.add("editing");
    const input = $("#composer-input");
    this.draft = input.value;
    input.value = item.message.content;
    autosize(input);
    $("#editing-original").textContent = item.message.content;
    $("#editing-bar").hidden = false;
    $("#send").textContent = "Save";
    composerExtras.setEditing(true);
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  /** Leave an edit: the composer gets back what was being written before it. */
  stopEditing() {
    if (this.editing === null) return;
    const item = this.messages.get(this.editing);
    if (item) item.el.classList.remove("editing");
    this.editing = null;
    $("#editing-bar").hidden = true;
    $("#send").textContent = "Send";
    const input = $("#composer-input");
    input.value = this.draft;
    autosize(input);
    this.draft = "";
    composerExtras.setEditing(false);
  }

  /** PATCH …/messages/<id>/ {content}: within MESSAGE_EDIT_WINDOW of sending; the frame updates the bubble. */
  async saveEdit(content) {
    const messageId = this.editing;
    const item = this.messages.get(messageId);
    if (!item) {
      this.stopEditing();
      return;
    }
    if (content === item.message.content) {
      this.stopEditing();
      return;
    }
    try {
      const message = await api.patch(`/api/conversations/${this.id}/messages/${messageId}/`, { content });
      if (state.chat !== this) return;
      if (this.editing === messageId) this.stopEditing();
      this.add(message); // the same as the frame brings, in case the socket is away
    } catch (error) {
      reportError(error, "Not edited");
      if (error.code === "edit_window_closed" || error.code === "message_deleted") this.stopEditing();
    }
  }

  /** DELETE …/messages/<id>/ after a confirmation: removed for both, its text erased from the server. */
  async unsend(messageId) {
    const ok = await confirmDialog({
      title: "Unsend this message?",
      text: `It is removed for you and ${nameOf(person(this.other.id))}, and erased from the server. They may have seen it already.`,
      confirmLabel: "Unsend",
    });
    if (!ok || state.chat !== this) return;
    try {
      const placeholder = await api.delete(`/api/conversations/${this.id}/messages/${messageId}/`);
      if (state.chat !== this) return;
      if (placeholder) this.add(placeholder);
      if (this.editing === messageId) this.stopEditing();
    } catch (error) {
      reportError(error, "Not unsent");
    }
  }

  /** Consecutive messages of one sender within a few minutes sit closer together. */
  regroup(el) {
    const prev = el.previousElementSibling;
    const close =
      prev &&
      prev.dataset.sender === el.dataset.sender &&
      Math.abs(new Date(el.dataset.time) - new Date(prev.dataset.time)) < 5 * 60 * 1000;
    el.classList.toggle("continued", Boolean(close));
  }

  // -- read receipts ------------------------------------------------------------------------------

  /** They read up to `messageId`: every own message up to there gets ✓✓. */
  markOwnRead(messageId) {
    this.readByThemUpTo = Math.max(this.readByThemUpTo, messageId);
    for (const item of this.messages.values()) {
      if (item.message.sender_id === this.ownId && item.message.id <= messageId && !item.message.is_read) {
        this.setRead(item, true);
      }
    }
  }

  /**
   * Mark read once a burst of arrivals (a resumed socket's backlog, a flurry of messages) has settled:
   * read state is a high-water mark, so one receipt for the newest says it all, where one per message
   * would spend the socket's frame budget for nothing.
   */
  markReadSoon() {
    if (this.readTimer !== null) return;
    this.readTimer = setTimeout(() => {
      this.readTimer = null;
      this.markRead();
    }, READ_RECEIPT_DELAY_MS);
  }

  /**
   * Tell the server we read their newest message (`{"type": "read_receipt", "message_id": N}` marks
   * everything up to N). Only while the page is actually visible.
   */
  markRead() {
    if (state.chat !== this || document.visibilityState !== "visible") return;
    const entry = state.matches.get(this.id);
    if (entry && entry.unread) {
      entry.unread = 0;
      renderMatches();
    }
    if (this.theirsUpTo <= this.readSent) return;
    const messageId = this.theirsUpTo;
    if (this.socket && this.socket.send({ type: "read_receipt", message_id: messageId })) {
      this.readSent = messageId;
    } else {
      // Not connected: the REST twin, POST /api/conversations/<id>/read/ {message_id}.
      api.post(`/api/conversations/${this.id}/read/`, { message_id: messageId }).then(
        () => (this.readSent = Math.max(this.readSent, messageId)),
        () => {},
      );
    }
  }

  // -- sending ------------------------------------------------------------------------------------

  /** Send `content` and/or `attachment` (a stored upload, composer.js). */
  send(content, attachment = null) {
    const clientId = newClientId();
    const el = h(
      "li",
      { class: "message own pending", dataset: { clientId } },
      h(
        "div",
        { class: "bubble" },
        content ? h("p", { class: "text" }, content) : null,
        attachment ? attachmentView(attachment) : null,
        h("span", { class: "meta" }, h("span", { class: "sending" }, "Sending…")),
      ),
    );
    this.list.append(el);
    this.pending.set(clientId, { content, attachment, el, failed: false });
    this.scrollToBottom();
    this.stopTyping();
    // `{"type": "message", "content": ..., "client_id": ...}`: the server echoes the stored message to
    // every socket of the conversation, ours included, and that echo replaces the pending bubble.
    const frame = messageFrame(content, attachment, clientId);
    if (this.socket && this.socket.send(frame)) return;
    // No socket right now: REST sends the same message (and broadcasts it the same way).
    const { type: _type, ...body } = frame;
    api.post(`/api/conversations/${this.id}/messages/`, body).then(
      (message) => {
        if (state.chat === this) this.onMessage(message);
      },
      (error) => {
        // Unreachable server: keep it pending, the socket resends it when it is back.
        if (error.status !== 0 && error.status !== 503) {
          this.failPending(clientId, error);
          if (!isRateLimited(error)) reportError(error, "Not sent");
        }
      },
    );
  }

  /**
   * The message was refused: its bubble offers a retry. Refused for going too fast (MESSAGE_RATE), it
   * says "Slow down — try again in N s" and counts down first.
   */
  failPending(clientId, error = null) {
    const item = this.pending.get(clientId);
    if (!item) return;
    item.failed = true;
    item.el.classList.add("failed");
    const meta = item.el.querySelector(".meta");
    const offerRetry = () => {
      const retry = h("button", { type: "button", class: "link-button" }, "Not sent. Retry");
      retry.addEventListener("click", () => {
        item.el.remove();
        this.pending.delete(clientId);
        this.send(item.content, item.attachment);
      });
      meta.replaceChildren(retry);
    };
    if (isRateLimited(error)) {
      const line = h("span", { class: "slow-down", role: "status" });
      meta.replaceChildren(line);
      countDown(line, retryAfterMs(error), { onDone: offerRetry });
    } else {
      offerRetry();
    }
  }

  // -- typing -------------------------------------------------------------------------------------

  /** Composer input: `{"type": "typing", "is_typing": true}`, repeated while typing goes on. */
  onInput(value) {
    if (!value.trim()) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (!this.typingSent || now - this.typingSentAt > TYPING_REPEAT_MS) {
      if (this.socket && this.socket.send({ type: "typing", is_typing: true })) {
        this.typingSent = true;
        this.typingSentAt = now;
      }
    }
    clearTimeout(this.typingIdle);
    this.typingIdle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    clearTimeout(this.typingIdle);
    if (this.typingSent) {
      this.typingSent = false;
      if (this.socket) this.socket.send({ type: "typing", is_typing: false });
    }
  }

  showTheirTyping(isTyping) {
    clearTimeout(this.theirTyping);
    const line = $("#typing");
    if (isTyping) {
      line.replaceChildren(
        h("span", { class: "typing-dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")),
        ` ${nameOf(person(this.other.id))} is typing…`,
      );
      this.theirTyping = setTimeout(() => this.showTheirTyping(false), THEIR_TYPING_MAX_MS);
    } else {
      line.replaceChildren();
    }
  }

  // -- header -------------------------------------------------------------------------------------

  renderHeader() {
    const user = person(this.other.id);
    fillAvatar($("#chat-avatar"), user);
    $("#chat-name").textContent = nameOf(user);
    $("#chat-profile").setAttribute("aria-label", `View ${nameOf(user)}’s profile`);
    const presence = $("#chat-presence");
    // Presence is shared only within an open conversation: once closed, say nothing. While our own
    // socket is down we cannot know either: "Online" from before the cut could be long false.
    const live = Boolean(this.socket) && this.socket.state.status === "open";
    const status = this.closed || !live ? "unknown" : user.status || "unknown";
    presence.dataset.status = status;
    let text = "";
    if (status === "online") text = "Online";
    else if (status === "offline") text = user.last_seen ? `Last seen ${relativeTime(user.last_seen)}` : "Offline";
    $("#chat-presence-text").textContent = text;
  }

  setComposerEnabled(enabled) {
    $("#composer-input").disabled = !enabled;
    composerExtras.setEnabled(enabled); // Send, and the attach button
    $("#unmatch").disabled = !enabled;
    $("#block").disabled = !enabled;
    $("#mute").disabled = !enabled;
    if (!enabled) {
      this.stopEditing();
      for (const button of $$(".message-menu", this.list)) button.remove();
    }
  }

  // -- mute ---------------------------------------------------------------------------------------

  renderMute() {
    const muted = isMuted(this.id);
    const button = $("#mute");
    button.dataset.muted = String(muted);
    $("#mute-label").textContent = muted ? "Muted" : "Mute";
    button.setAttribute("aria-label", muted ? "Muted: change or unmute" : "Mute notifications");
    const line = $("#chat-muted");
    line.hidden = !muted;
    line.textContent = muted ? `Muted ${muteEndText(state.mutes.get(this.id))}`.trim() : "";
  }

  openMuteMenu() {
    const button = $("#mute");
    if (menuOpenFor(button)) {
      closeMenu();
      return;
    }
    const items = MUTE_CHOICES.map((choice) => ({
      label: choice.label,
      run: () => setMute(this.id, choice.ms),
    }));
    if (isMuted(this.id)) items.push({ label: "Unmute", run: () => setMute(this.id, undefined) });
    openMenu(button, items, { label: isMuted(this.id) ? "Muted" : "Mute notifications" });
  }

  // -- scrolling and older history ----------------------------------------------------------------

  nearBottom() {
    return this.scroll.scrollHeight - this.scroll.scrollTop - this.scroll.clientHeight < 80;
  }

  scrollToBottom() {
    this.scroll.scrollTop = this.scroll.scrollHeight;
    $("#jump-latest").hidden = true;
  }

  onScroll() {
    if (this.nearBottom()) $("#jump-latest").hidden = true;
    if (this.scroll.scrollTop < 80) this.loadOlder().catch(reportError);
  }

  /** GET /api/conversations/<id>/messages/?before=<oldest shown>: the page before, kept in place. */
  async loadOlder() {
    if (!this.hasMore || this.loadingOlder || this.firstId === null) return;
    this.loadingOlder = true;
    $("#history-state").textContent = "Loading earlier messages…";
    try {
      const page = await api.get(`/api/conversations/${this.id}/messages/?before=${this.firstId}&limit=${HISTORY_PAGE}`);
      if (state.chat !== this) return;
      const fromBottom = this.scroll.scrollHeight - this.scroll.scrollTop;
      this.addOlder(page.results, page.has_more);
      this.scroll.scrollTop = this.scroll.scrollHeight - fromBottom; // what was on screen stays put
    } finally {
      this.loadingOlder = false;
    }
  }

  /** With a tall window the first page may not fill it, and then no scroll event ever comes. */
  async fillViewport() {
    while (state.chat === this && this.hasMore && this.scroll.scrollHeight <= this.scroll.clientHeight) {
      await this.loadOlder();
    }
  }
}

async function openChat(conversationId, { record = true } = {}) {
  let entry = state.matches.get(conversationId);
  if (!entry) {
    await loadMatches();
    entry = state.matches.get(conversationId);
    if (!entry) return;
  }
  if (state.chat && state.chat.id === conversationId) {
    showPanel("chat", { record });
    return;
  }
  closeChat();
  composerExtras.reset();
  const chat = new Chat(entry);
  state.chat = chat;
  showPanel("chat", { record });
  renderConnection();
  try {
    await chat.open();
  } catch (error) {
    reportError(error, "Could not open the conversation");
  }
  if (state.chat === chat && matchMedia("(min-width: 760px)").matches) $("#composer-input").focus();
}

function closeChat() {
  if (!state.chat) return;
  state.chat.close();
  state.chat = null;
  renderConnection();
}

function setupChat() {
  const input = $("#composer-input");
  const form = $("#composer");
  composerExtras = new ComposerExtras({ api, conversation: () => (state.chat ? state.chat.id : null) });
  const submit = () => {
    const chat = state.chat;
    if (!chat || chat.closed) return;
    // Over the length limit, or a file still uploading or refused: nothing goes (the composer says why).
    const ready = composerExtras.ready();
    if (!ready) return;
    const { content, attachment } = ready;
    if (chat.editing !== null) {
      if (content) chat.saveEdit(content);
      else chat.unsend(chat.editing); // emptied: the only way to say nothing is to unsend
      return;
    }
    if (!content && !attachment) return;
    chat.send(content, attachment);
    input.value = "";
    autosize(input);
    composerExtras.clear();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter starts a new line; Escape leaves an edit.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape" && state.chat && state.chat.editing !== null) {
      event.preventDefault();
      state.chat.stopEditing();
    }
  });
  input.addEventListener("input", () => {
    autosize(input);
    // An edit is not a new message being typed: the other person is not told.
    if (state.chat && state.chat.editing === null) state.chat.onInput(input.value);
  });
  $("#editing-cancel").addEventListener("click", () => {
    if (state.chat) state.chat.stopEditing();
    input.focus();
  });
  $("#mute").addEventListener("click", () => state.chat && state.chat.openMuteMenu());
  $("#chat-profile").addEventListener("click", () => state.chat && openProfile(state.chat.other.id));
  $("#chat-name").addEventListener("click", () => state.chat && openProfile(state.chat.other.id));
  $("#chat-scroll").addEventListener("scroll", () => state.chat && state.chat.onScroll(), { passive: true });
  $("#jump-latest").addEventListener("click", () => state.chat && state.chat.scrollToBottom());
  $("#chat-back").addEventListener("click", () => showPanel("chats"));
  $("#unmatch").addEventListener("click", () => endMatch("unmatch"));
  $("#block").addEventListener("click", () => endMatch("block"));
  $("#report").addEventListener("click", () => state.chat && reportUser(state.chat.other, { chat: state.chat }));
  $("#chat-more").addEventListener("click", () => {
    const chat = state.chat;
    const button = $("#chat-more");
    if (!chat || menuOpenFor(button)) {
      closeMenu();
      return;
    }
    const items = [{ label: "Report…", danger: true, run: () => reportUser(chat.other, { chat }) }];
    if (!chat.closed) {
      items.unshift(
        { label: "Unmatch", run: () => endMatch("unmatch") },
        { label: "Block", danger: true, run: () => endMatch("block") },
      );
    }
    openMenu(button, items, { label: "More actions" });
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.chat) state.chat.markRead();
    if (document.visibilityState === "visible" && state.panel === "discover") topUpIfStale();
  });
  // "Last seen 3 min ago" ages.
  setInterval(() => state.chat && state.chat.renderHeader(), 30_000);
}

/** A `message` frame; its REST twin is the same fields without `type`. */
function messageFrame(content, attachment, clientId) {
  const frame = { type: "message", content, client_id: clientId };
  if (attachment) frame.attachment_id = attachment.id;
  return frame;
}

/** One line by default; taller once the text wraps or has a line break. */
function autosize(textarea) {
  textarea.classList.remove("multiline");
  if (textarea.value && textarea.scrollHeight > textarea.clientHeight + 2) textarea.classList.add("multiline");
}

/** DELETE /api/matches/<id>/ or POST /api/blocks/ {user_id}: the server closes the conversation (4001). */
async function endMatch(kind) {
  const chat = state.chat;
  if (!chat) return;
  const name = nameOf(person(chat.other.id));
  const ok = await confirmDialog(
    kind === "block"
      ? { title: `Block ${name}?`, text: `You will not see each other anywhere again, and this conversation closes.`, confirmLabel: "Block" }
      : { title: `Unmatch ${name}?`, text: "The conversation closes for both of you.", confirmLabel: "Unmatch" },
  );
  if (!ok || state.chat !== chat) return;
  try {
    if (kind === "block") await api.post("/api/blocks/", { user_id: chat.other.id });
    else await api.delete(`/api/matches/${chat.matchId}/`);
    state.matches.delete(chat.id);
    showPanel("discover");
    toast({ title: kind === "block" ? `${name} is blocked` : `You unmatched ${name}`, kind: "info", timeoutMs: 4000 });
    await loadMatches();
  } catch (error) {
    reportError(error, kind === "block" ? "Could not block" : "Could not unmatch");
  }
}

// =====================================================================================================
// Reporting someone
// =====================================================================================================

/**
 * "Report …" from a card, a profile or a conversation (`chat`: their latest messages may go with it).
 * The server blocks them for the user at once: they leave Discover, Liked you and the matches.
 */
async function reportUser(user, { chat = null } = {}) {
  closeProfileDialog();
  const shown = person(user.id);
  const receipt = await reportDialog.open({ ...user, ...shown }, { messageIds: chat ? chat.theirMessageIds() : [] });
  if (!receipt || !api.signedIn) return;
  toast({
    title: `${nameOf(shown)} is reported`,
    text: "They are blocked for you and are not told. Thank you for helping keep Spark safe.",
    kind: "info",
    timeoutMs: 6000,
  });
  state.candidates = state.candidates.filter((c) => userOf(c).id !== user.id);
  state.likes = state.likes.filter((l) => userOf(l).id !== user.id);
  renderLikes();
  if (state.chat && state.chat.other.id === user.id) {
    state.matches.delete(state.chat.id);
    showPanel("discover");
  } else if (state.panel === "discover") {
    if (state.candidates.length === 0) await loadCandidates();
    else renderDiscover();
  }
  await loadMatches().catch(() => {});
}

// =====================================================================================================
// Someone's profile, with their photos
// =====================================================================================================

let profileShown = null; // the user id the dialog shows (a late answer for another one is dropped)

/** GET /api/users/<id>/ in a dialog: photos, name, age, bio. A 429 (PROFILE_READS_PER_MINUTE) says "Slow down". */
async function openProfile(userId) {
  const dialog = $("#profile-dialog");
  profileShown = userId;
  const status = $("#profile-dialog-status");
  const fill = (user) => {
    $("#profile-dialog-photos").replaceChildren(photoCarousel(user, { className: "profile-photo" }));
    $("#profile-dialog-name").textContent = `${nameOf(user)}${user.age ? `, ${user.age}` : ""}`;
    $("#profile-dialog-meta").textContent = describe(user, { withAge: false }) || (user.username ? `@${user.username}` : "");
    $("#profile-dialog-bio").textContent = user.bio || "";
  };
  controlStatus(status, null);
  fill(person(userId));
  if (!dialog.open) dialog.showModal();
  try {
    const user = remember(await api.get(`/api/users/${userId}/`));
    if (profileShown === userId && dialog.open) fill(user);
  } catch (error) {
    if (profileShown !== userId) return;
    if (error.status === 404) controlStatus(status, null, "This profile is not available any more.");
    else controlStatus(status, error);
  }
}

function closeProfileDialog() {
  const dialog = $("#profile-dialog");
  if (dialog.open) dialog.close();
  profileShown = null;
}

// =====================================================================================================
// Start
// =====================================================================================================

/** A notification was clicked while this page was open: show what it was about. */
function openPushed(push) {
  if (push.conversation_id) openChat(push.conversation_id);
  else if (push.type === "new_like") showPanel("likes");
}

function setup() {
  pushToggle = new PushToggle(api, $("#push-toggle"), { notify: toast, onOpen: openPushed });
  settingsPanel = new SettingsPanel(api, { notify: toast });
  accountPanel = new AccountPanel(api, {
    notify: toast,
    onDeleted: () => {
      signOut();
      toast({ title: "Account deleted", text: "Your account and everything in it are gone." });
    },
  });
  reportDialog = new ReportDialog(api);
  matchMoment = new MatchMoment($("#match-moment"), { onSayHi: sayHi, fallbackFocus: focusAfterMatch });
  $("#profile-report").addEventListener("click", () => {
    const userId = profileShown;
    if (userId !== null) reportUser(person(userId));
  });
  $("#profile-dialog").addEventListener("close", () => {
    profileShown = null;
    stopCountDown($("#profile-dialog-status"));
  });
  setupAuthForms();
  setupProfile();
  setupChat();
  for (const item of $$(".nav-item")) item.addEventListener("click", () => showPanel(item.dataset.panel));
  $("#sign-out").addEventListener("click", () => signOut());
  $("#connection-retry").addEventListener("click", retrySocketsNow);
  // Back online: reconnect now rather than when the backoff timer says.
  window.addEventListener("online", retrySocketsNow);
  renderConnection();
  resumeSession();
}

/** A reload, or a return through Back: the session cookie of the earlier visit signs the user in again. */
async function resumeSession() {
  const view = $("#auth-view");
  view.setAttribute("aria-busy", "true");
  try {
    if (await api.resume()) await startSession();
  } catch (error) {
    reportError(error);
  } finally {
    view.removeAttribute("aria-busy");
  }
}

setup();

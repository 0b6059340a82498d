// Spark: a small dating-and-chat client that uses nothing but the server's public API.
//
//   REST (api.js)          the source of truth: account, profile, discover, likes, matches, history.
//   /ws/notifications/     one socket per signed-in page: new_message, new_match and new_like toasts.
//   /ws/conversations/<id>/ one socket for the conversation on screen: messages, typing, read receipts,
//                          the other person's online/offline status.
//
// Both sockets reconnect by themselves (socket.js). After a reconnect the notifications side re-reads
// the lists over REST (notifications sent while away are not replayed), and the conversation side asks
// for `?after=<last message id seen>`: the server replays every message stored since, in order, and
// the page drops any id it already shows, so nothing is missed and nothing appears twice.

import { Api, ApiError } from "./api.js";
import { PushToggle } from "./push.js";
import { CLOSE_REASONS, ReconnectingSocket, socketUrl } from "./socket.js";
import {
  $, $$, avatar, clearFormError, clockTime, confirmDialog, fillAvatar, h, nameOf, relativeTime, shortTime,
  showFormError, toast,
} from "./ui.js";

const HISTORY_PAGE = 30; // messages per history request (the server allows up to 100)
const DISCOVER_BATCH = 10;
const PRESENCE_POLL_MS = 30_000; // online dots of matches whose conversation is not open
const TYPING_IDLE_MS = 3000; // stop "typing" after this much silence in the composer
const TYPING_REPEAT_MS = 3000; // the server forgets a silent typist after a few seconds: say it again
const THEIR_TYPING_MAX_MS = 12_000; // hide their indicator even if the `false` frame never comes

const api = new Api({ onSignedOut: (reason) => signOut(reason) });
let pushToggle = null; // the "Enable notifications" button (push.js), made in setup()

const state = {
  me: null, // own profile (GET /api/users/me/)
  people: new Map(), // user id -> what we know: summary, public profile, {status, last_seen}
  matches: new Map(), // conversation id -> {conversationId, matchId, user, lastMessage, unread, updatedAt}
  likes: [],
  candidates: [],
  discoverLoaded: false,
  panel: "discover",
  chat: null, // the open Chat, if any
  notifications: null, // the notifications ReconnectingSocket
  presenceTimer: null,
  toastedMatches: new Set(),
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
  toast({ title, text: error.message || String(error), kind: "error" });
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
      forms[key].hidden = !on;
    }
  };
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
    clearFormError(form);
    const data = new FormData(form);
    await busy(form, async () => {
      try {
        await api.signIn(String(data.get("username")).trim(), String(data.get("password")));
        form.reset();
        await startSession();
      } catch (error) {
        showFormError(form, error.code === "invalid_credentials" ? { message: "Wrong username or password." } : error);
      }
    });
  });

  forms.register.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = forms.register;
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
        await api.register(fields); // POST /api/register/, then POST /api/token/
        form.reset();
        await startSession();
      } catch (error) {
        showFormError(form, error.code === "username_taken" ? { message: "That username is taken." } : error);
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
  showPanel("discover");
  await Promise.all([loadMatches(), loadLikes()].map((p) => p.catch((e) => reportError(e))));
  clearInterval(state.presenceTimer);
  state.presenceTimer = setInterval(refreshPresence, PRESENCE_POLL_MS);
}

function signOut(reason) {
  closeChat();
  if (state.notifications) state.notifications.stop();
  state.notifications = null;
  clearInterval(state.presenceTimer);
  pushToggle.stop();
  api.clearTokens();
  Object.assign(state, {
    me: null, people: new Map(), matches: new Map(), likes: [], candidates: [], discoverLoaded: false,
  });
  $("#app-view").hidden = true;
  $("#me").hidden = true;
  $("#auth-view").hidden = false;
  renderMatches();
  renderConnection();
  document.title = "Spark · Chat & Matching demo";
  if (reason) toast({ title: "Signed out", text: reason, kind: "error" });
  $("#signin-username").focus();
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
    url: async () => socketUrl("/ws/notifications/", { token: await api.freshAccessToken() }),
    onFrame: onNotification,
    onState: (s) => {
      renderConnection();
      if (s.status === "closed" && s.code === 4002) signOut("Your session expired. Please sign in again.");
    },
    onOpen: ({ reconnected }) => {
      // Notifications are not replayed after a disconnect: catch up from REST instead.
      if (reconnected) {
        loadMatches().catch(() => {});
        loadLikes().catch(() => {});
      }
    },
  });
  state.notifications.start();
}

/** `{"type": "notification", "notification": {"type": "new_message" | "new_match" | "new_like", ...}}` */
function onNotification(frame) {
  if (frame.type !== "notification" || !frame.notification) return;
  const notification = frame.notification;
  switch (notification.type) {
    case "new_message":
      onNewMessageNotification(notification.message);
      break;
    case "new_match":
      onNewMatch(notification.match);
      break;
    case "new_like":
      onNewLike(notification.liker);
      break;
    default:
      break; // a newer server may add kinds: ignore what we do not know
  }
}

function onNewMessageNotification(message) {
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
  if (watching) return; // the conversation socket shows it already
  withProfile(message.sender).then((sender) =>
    toast({
      title: `New message from ${nameOf(sender)}`,
      text: message.content,
      kind: "message",
      action: { label: "Open", run: () => openChat(message.conversation_id) },
    }),
  );
}

function onNewMatch(match) {
  // {id, user: {id, username, profile_picture}, created_at, conversation_id?}
  const user = remember(match.user);
  state.candidates = state.candidates.filter((c) => userOf(c).id !== user.id);
  state.likes = state.likes.filter((l) => userOf(l).id !== user.id);
  renderLikes();
  renderDiscover();
  Promise.all([loadMatches().catch(() => {}), withProfile(user)]).then(() => announceMatch(match.id, user));
}

function announceMatch(matchId, user) {
  if (state.toastedMatches.has(matchId)) return; // the like's answer and the notification both say it
  state.toastedMatches.add(matchId);
  const entry = [...state.matches.values()].find((m) => m.user.id === user.id);
  toast({
    title: "It’s a match!",
    text: `You and ${nameOf(person(user.id))} like each other.`,
    kind: "match",
    timeoutMs: 8000,
    action: entry ? { label: "Say hi", run: () => openChat(entry.conversationId) } : null,
  });
}

async function onNewLike(liker) {
  loadLikes().catch(() => {});
  const user = await withProfile(liker);
  toast({
    title: `${nameOf(user)} liked you`,
    text: "Like them back to start talking.",
    kind: "like",
    action: { label: "See", run: () => showPanel("likes") },
  });
}

// =====================================================================================================
// Panels
// =====================================================================================================

function showPanel(name) {
  if (name !== "chat") closeChat();
  state.panel = name;
  for (const panel of $$(".panel")) panel.hidden = panel.id !== `panel-${name}`;
  for (const item of $$(".nav-item")) {
    if (item.dataset.panel === name) item.setAttribute("aria-current", "page");
    else item.removeAttribute("aria-current");
  }
  $("#app-view").dataset.view = name === "chat" ? "chat" : "list";
  if (name === "profile") fillProfileForm();
  if (name === "discover" && !state.discoverLoaded) loadCandidates().catch(reportError);
  renderMatches();
}

// =====================================================================================================
// Discover: one candidate at a time
// =====================================================================================================

async function loadCandidates() {
  const data = await api.get(`/api/discover/?limit=${DISCOVER_BATCH}`);
  state.candidates = listOf(data);
  state.discoverLoaded = true;
  for (const c of state.candidates) remember(userOf(c));
  renderDiscover();
}

function describe(user, { withAge = true } = {}) {
  const parts = [];
  if (withAge && user.age) parts.push(`${user.age}`);
  if (user.gender) parts.push({ man: "Man", woman: "Woman", nonbinary: "Nonbinary" }[user.gender] || user.gender);
  if (typeof user.distance_km === "number") parts.push(`${Math.round(user.distance_km)} km away`);
  return parts.join(" · ");
}

function renderDiscover() {
  const stage = $("#discover-stage");
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
        h("button", { type: "button", class: "button button-secondary", onclick: () => loadCandidates().catch(reportError) }, "Look again"),
      ),
    );
    return;
  }
  const user = userOf(candidate);
  const label = `${nameOf(user)}${user.age ? `, ${user.age}` : ""}`;
  const photo = user.profile_picture
    ? h("img", { class: "candidate-photo", src: user.profile_picture, alt: `Photo of ${nameOf(user)}` })
    : fillAvatar(h("div", { class: "candidate-photo candidate-initials", "aria-hidden": "true" }), user);
  stage.replaceChildren(
    h(
      "article",
      { class: "card candidate", "aria-label": label, dataset: { userId: user.id } },
      photo,
      h(
        "div",
        { class: "candidate-info" },
        h("h3", { class: "candidate-name" }, nameOf(user), user.age ? h("span", { class: "candidate-age" }, ` ${user.age}`) : null),
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
  for (const b of $$("#discover-stage button, #likes-list button")) b.disabled = true;
  try {
    if (kind === "like") {
      const result = await api.post("/api/likes/", { user_id: user.id });
      if (result && result.match) {
        await loadMatches();
        announceMatch(result.match.id, user);
      }
    } else {
      await api.post("/api/passes/", { user_id: user.id });
    }
    state.candidates = state.candidates.filter((c) => userOf(c).id !== user.id);
    state.likes = state.likes.filter((l) => userOf(l).id !== user.id);
    renderLikes();
    if (state.candidates.length === 0) await loadCandidates();
    else renderDiscover();
  } catch (error) {
    reportError(error, kind === "like" ? "Could not like" : "Could not pass");
    renderDiscover();
    renderLikes();
  }
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
        avatar(user, "lg"),
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
}

/**
 * Online dots for the list. Live `status` frames come only on a conversation socket, and the page keeps
 * one open (the one on screen), so the others are read from GET /api/users/<id>/, which carries
 * `status` and `last_seen` for people we share an open conversation with.
 */
async function refreshPresence() {
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

function renderMatches() {
  const entries = [...state.matches.values()].sort((a, b) => String(b.updatedAt).localeCompare(String(a.updatedAt)));
  const list = $("#match-list");
  list.replaceChildren(
    ...entries.map((entry) => {
      const user = person(entry.user.id);
      const status = user.status || "unknown";
      const last = entry.lastMessage;
      const preview = last
        ? `${last.sender_id === state.me.id ? "You: " : ""}${last.content || (last.attachment ? "Attachment" : "")}`
        : "New match: say hi!";
      const unread = entry.unread > 0 ? h("span", { class: "badge", "aria-hidden": "true" }, String(entry.unread)) : null;
      const spoken = [nameOf(user), status === "online" ? "online" : null, entry.unread ? `${entry.unread} unread` : null]
        .filter(Boolean)
        .join(", ");
      const open = state.chat && state.chat.id === entry.conversationId;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `match${entry.unread ? " has-unread" : ""}`,
            "aria-current": open ? "true" : null,
            "aria-label": spoken,
            dataset: { conversationId: entry.conversationId, userId: user.id, status },
            onclick: () => openChat(entry.conversationId),
          },
          h("span", { class: "avatar-wrap" }, avatar(user, "md"), h("span", { class: "presence-dot", dataset: { status } })),
          h(
            "span",
            { class: "match-text" },
            h("span", { class: "match-name" }, nameOf(user)),
            h("span", { class: "match-preview" }, preview),
          ),
          h("span", { class: "match-meta" }, h("span", { class: "match-time" }, shortTime(last ? last.created_at : entry.updatedAt)), unread),
        ),
      );
    }),
  );
  $("#match-empty").hidden = entries.length > 0;
  const unread = entries.reduce((sum, e) => sum + e.unread, 0);
  document.title = `${unread ? `(${unread}) ` : ""}Spark · Chat & Matching demo`;
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
  fillAvatar($("#profile-picture"), me);
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
        showFormError(form, error);
      }
    });
  });

  // PUT /api/users/me/picture/ with the file's bytes as the body (no multipart).
  $("#picture-input").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    if (file.size > 5 * 1024 * 1024) {
      toast({ title: "Picture too large", text: "Pick an image under 5 MB.", kind: "error" });
      return;
    }
    try {
      const { profile_picture: url } = await api.putBytes("/api/users/me/picture/", file);
      state.me = remember({ ...state.me, profile_picture: url });
      renderMe();
      fillAvatar($("#profile-picture"), state.me);
      toast({ title: "Picture updated", kind: "info", timeoutMs: 3000 });
    } catch (error) {
      reportError(error, "Upload failed");
    }
  });
}

// =====================================================================================================
// A conversation
// =====================================================================================================

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
    this.readByThemUpTo = 0; // highest of our ids they have read
    this.typingSent = false;
    this.typingSentAt = 0;
    this.typingIdle = null;
    this.theirTyping = null;
    this.liveStatus = false; // a status frame arrived on this socket
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
    $("#typing").textContent = "";
    $("#chat-banner").hidden = true;
    $("#jump-latest").hidden = true;
    this.setComposerEnabled(true);
    this.renderHeader();
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
    this.stopTyping();
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
      this.markRead();
    }
    if (message.sender_id === this.ownId || this.nearBottom()) this.scrollToBottom();
    else $("#jump-latest").hidden = false;
  }

  onError(frame) {
    const pending = frame.client_id && this.pending.get(frame.client_id);
    if (pending) this.failPending(frame.client_id);
    toast({ title: "Not sent", text: frame.message || frame.code, kind: "error" });
  }

  onSocketOpen() {
    $("#chat-banner").hidden = true;
    // Messages sent but never echoed (the socket dropped first) go again with the same client_id: the
    // server stores a client_id once, so a message that did get through is not duplicated.
    for (const [clientId, item] of this.pending) {
      if (!item.failed) this.socket.send({ type: "message", content: item.content, client_id: clientId });
    }
    this.markRead();
  }

  onSocketState(s) {
    renderConnection();
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
      if (message.is_read && !known.message.is_read) this.setRead(known, true);
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
    return h(
      "li",
      {
        class: `message ${own ? "own" : "theirs"}`,
        dataset: { id: message.id, sender: message.sender_id, time: message.created_at },
      },
      h(
        "div",
        { class: "bubble" },
        own ? null : h("span", { class: "visually-hidden" }, `${nameOf(person(message.sender_id))}: `),
        message.content ? h("p", { class: "text" }, message.content) : null,
        attachment
          ? attachment.content_type.startsWith("image/")
            ? h("img", { class: "attachment-image", src: attachment.url, alt: "Image attachment" })
            : h("a", { class: "attachment", href: attachment.url, target: "_blank", rel: "noopener" }, "Attachment")
          : null,
        h(
          "span",
          { class: "meta" },
          h("time", { datetime: message.created_at }, clockTime(message.created_at)),
          own ? this.ticks(message.is_read) : null,
        ),
      ),
    );
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

  send(content) {
    const clientId = newClientId();
    const el = h(
      "li",
      { class: "message own pending", dataset: { clientId } },
      h("div", { class: "bubble" }, h("p", { class: "text" }, content), h("span", { class: "meta" }, h("span", { class: "sending" }, "Sending…"))),
    );
    this.list.append(el);
    this.pending.set(clientId, { content, el, failed: false });
    this.scrollToBottom();
    this.stopTyping();
    // `{"type": "message", "content": ..., "client_id": ...}`: the server echoes the stored message to
    // every socket of the conversation, ours included, and that echo replaces the pending bubble.
    if (this.socket && this.socket.send({ type: "message", content, client_id: clientId })) return;
    // No socket right now: REST sends the same message (and broadcasts it the same way).
    api.post(`/api/conversations/${this.id}/messages/`, { content, client_id: clientId }).then(
      (message) => {
        if (state.chat === this) this.onMessage(message);
      },
      (error) => {
        // Unreachable server: keep it pending, the socket resends it when it is back.
        if (error.status !== 0 && error.status !== 503) {
          this.failPending(clientId);
          reportError(error, "Not sent");
        }
      },
    );
  }

  failPending(clientId) {
    const item = this.pending.get(clientId);
    if (!item) return;
    item.failed = true;
    item.el.classList.add("failed");
    const retry = h("button", { type: "button", class: "link-button" }, "Not sent. Retry");
    retry.addEventListener("click", () => {
      item.el.remove();
      this.pending.delete(clientId);
      this.send(item.content);
    });
    item.el.querySelector(".meta").replaceChildren(retry);
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
    const presence = $("#chat-presence");
    // Presence is shared only within an open conversation: once closed, say nothing.
    const status = this.closed ? "unknown" : user.status || "unknown";
    presence.dataset.status = status;
    let text = "";
    if (status === "online") text = "Online";
    else if (status === "offline") text = user.last_seen ? `Last seen ${relativeTime(user.last_seen)}` : "Offline";
    $("#chat-presence-text").textContent = text;
  }

  setComposerEnabled(enabled) {
    $("#composer-input").disabled = !enabled;
    $("#send").disabled = !enabled;
    $("#unmatch").disabled = !enabled;
    $("#block").disabled = !enabled;
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

async function openChat(conversationId) {
  let entry = state.matches.get(conversationId);
  if (!entry) {
    await loadMatches();
    entry = state.matches.get(conversationId);
    if (!entry) return;
  }
  if (state.chat && state.chat.id === conversationId) {
    showPanel("chat");
    return;
  }
  closeChat();
  const chat = new Chat(entry);
  state.chat = chat;
  showPanel("chat");
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
  const submit = () => {
    const content = input.value.trim();
    if (!content || !state.chat || state.chat.closed) return;
    state.chat.send(content);
    input.value = "";
    autosize(input);
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter starts a new line.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => {
    autosize(input);
    if (state.chat) state.chat.onInput(input.value);
  });
  $("#chat-scroll").addEventListener("scroll", () => state.chat && state.chat.onScroll(), { passive: true });
  $("#jump-latest").addEventListener("click", () => state.chat && state.chat.scrollToBottom());
  $("#chat-back").addEventListener("click", () => showPanel("discover"));
  $("#unmatch").addEventListener("click", () => endMatch("unmatch"));
  $("#block").addEventListener("click", () => endMatch("block"));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.chat) state.chat.markRead();
  });
  // "Last seen 3 min ago" ages.
  setInterval(() => state.chat && state.chat.renderHeader(), 30_000);
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
// Start
// =====================================================================================================

/** A notification was clicked while this page was open: show what it was about. */
function openPushed(push) {
  if (push.conversation_id) openChat(push.conversation_id);
  else if (push.type === "new_like") showPanel("likes");
}

function setup() {
  pushToggle = new PushToggle(api, $("#push-toggle"), { notify: toast, onOpen: openPushed });
  setupAuthForms();
  setupProfile();
  setupChat();
  for (const item of $$(".nav-item")) item.addEventListener("click", () => showPanel(item.dataset.panel));
  $("#sign-out").addEventListener("click", () => signOut());
  renderConnection();
}

setup();

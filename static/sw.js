// Spark's service worker: shows the pushes the server sends while this user has no page open (Web Push,
// RFC 8030), and brings the app to the front when one is clicked.
//
// Served at /sw.js so that its scope covers the whole page. A push carries only ids and counts
// ({type, conversation_id, count}), never message text unless the operator enabled previews
// (PUSH_PREVIEW_CHARS, then also `sender` and `text`): the notification is worded here.

const ICON = "/static/favicon.svg";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function plural(count, one, many) {
  return count > 1 ? `${count} ${many}` : one;
}

/** Title, body and tag of a push. Pushes of one conversation share a tag: the newest replaces the last. */
function describe(data) {
  const count = Number(data.count) || 1;
  switch (data.type) {
    case "new_message":
      if (data.sender) {
        return { title: data.sender, body: data.text || "Sent you a message", tag: `conversation-${data.conversation_id}` };
      }
      return {
        title: plural(count, "New message", "new messages"),
        body: "Open Spark to read it.",
        tag: `conversation-${data.conversation_id}`,
      };
    case "new_match":
      return { title: "It's a match!", body: "Say hello.", tag: `match-${data.conversation_id}` };
    case "new_like":
      return { title: plural(count, "Someone liked you", "people liked you"), body: "See who in Spark.", tag: "likes" };
    default:
      return { title: "Spark", body: "Something new is waiting for you.", tag: "spark" };
  }
}

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = {};
  }
  const { title, body, tag } = describe(data);
  event.waitUntil(self.registration.showNotification(title, { body, tag, renotify: true, icon: ICON, data }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const page = windows.find((client) => new URL(client.url).origin === self.location.origin);
      if (page) {
        await page.focus();
        // The page opens the conversation if its user is still signed in (app.js).
        page.postMessage({ type: "push-open", push: data });
        return;
      }
      await self.clients.openWindow("/");
    })(),
  );
});

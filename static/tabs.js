// On a phone (below 760 px) the sidebar's sections are a tab bar at the bottom of the screen: Discover,
// Chats, Liked you, Profile, Settings. Chats is the list of matches, one tap away; on a wider screen
// that list is always in the sidebar and the Chats tab is not shown. The tabs are the sidebar's own
// buttons (`.nav-item`), so each is a view of the browser's history like the others (#chats).

import { $ } from "./ui.js";

/** The unread count on the Chats tab: the messages unread across every conversation. */
export function renderChatsBadge(unread) {
  const badge = $("#chats-badge");
  badge.hidden = unread === 0;
  badge.textContent = String(unread);
  // The number alone says little when read out: the tab is "Chats 3 unread".
  $("#chats-unread").textContent = unread === 0 ? "" : `${unread} unread`;
}

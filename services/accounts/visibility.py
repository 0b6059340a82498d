"""Who may read a user's public profile: the people who could meet them, and no one else.

Knowing an id is not enough (counting ids through GET /api/users/<id>/ used to list every profile,
whatever discover would have shown). Besides its owner, a profile is readable by:

- A discover candidate: someone whose profile suits the owner's preferences and whose preferences the
  owner suits, by discover's own filter (`preference_filter`, services/matching/service.py). Whether the
  reader already liked or passed them does not matter; nor does distance: a reader may ask discover for
  a radius of half the Earth (`max_distance_km` up to 20,000), and a reader without a location sees
  everyone the preferences let through, so distance hides no one discover would not show.
- Someone who liked the owner, or whom the owner liked: a like received is listed with the liker, whose
  profile is what the list is for; a like sent keeps the liked profile readable once discover has
  stopped showing it.
- A match, current or former: an ended match's conversation stays readable by both, and names who wrote
  what. Someone who wants a former match to see nothing of them blocks them.

A block either way hides a profile whatever the relation (`UserService.public_for`), and whoever may not
read it gets exactly the answer for an id nobody has.

Each check is a point read on a unique index, in the order they usually decide (the demo page reads its
matches' profiles every 30 s for their presence, so the match comes first), stopping at the first that
holds. A refused reader costs the same reads whether or not the id exists, so timing tells no more than
the answer does.
"""

from __future__ import annotations

import datetime as dt

from services.matching.service import pair_key, preference_filter
from services.storage.store import Doc, Store

# What `preference_filter` reads of the viewer.
PREFERENCE_FIELDS: Doc = {"gender": 1, "interested_in": 1, "birthdate": 1, "age_min": 1, "age_max": 1}


class ProfileVisibility:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def may_view(self, viewer_id: int, owner_id: int) -> bool:
        """Whether `viewer_id` could meet `owner_id` (blocks are the caller's to check)."""
        if viewer_id == owner_id:
            return True
        store = self._store
        if await store.matches.find_one({"pair": pair_key(viewer_id, owner_id)}, {"_id": 1}) is not None:
            return True
        for liker, liked in ((viewer_id, owner_id), (owner_id, viewer_id)):
            if await store.likes.find_one({"from_id": liker, "to_id": liked}, {"_id": 1}) is not None:
                return True
        return await self.is_candidate(viewer_id, owner_id)

    async def is_candidate(self, viewer_id: int, owner_id: int) -> bool:
        """Whether discover's preference filter lets `owner_id` through for `viewer_id` (both ways)."""
        viewer = await self._store.users.find_one({"_id": viewer_id}, PREFERENCE_FIELDS)
        if viewer is None:
            return False
        prefs = preference_filter(viewer, dt.datetime.now(dt.UTC).date())
        # The id first, so the query is a point read on _id that the preferences then filter.
        return await self._store.users.find_one({"_id": owner_id, **prefs}, {"_id": 1}) is not None

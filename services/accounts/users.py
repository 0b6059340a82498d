"""Accounts and profiles."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo.errors

from services.accounts.auth import PasswordHasher, TokenError, TokenPair, TokenService, generation_of
from services.accounts.liveness import AccountLiveness
from services.accounts.revocation import Revocations
from services.accounts.throttle import LoginThrottle
from services.core.clock import iso
from services.core.config import Settings
from services.core.errors import Conflict, Invalid, NotFound, RateLimited, Unauthorized
from services.core.text import clean_line, clean_multiline, has_visible
from services.matching.location import LocationPrivacy, is_secret
from services.media.photos import ProfilePhotos
from services.media.store import MediaStore
from services.storage.store import Doc, Store

# Matched with fullmatch: `$` alone would also accept a trailing newline ("alice\n").
USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,30}")
GENDERS = ("man", "woman", "nonbinary")
PROFILE_FIELDS = (
    "email",
    "display_name",
    "bio",
    "birthdate",
    "gender",
    "interested_in",
    "location",
    "age_min",
    "age_max",
)
SUMMARY_TTL_S = 30.0


def point_of(doc: Doc) -> list[float] | None:
    """A user's stored location as [lon, lat], or None.

    What is stored is the coarse point (services/matching/location.py), never the position the user
    sent. Locations are stored as legacy coordinate pairs under a `2d` index: MongoDB answers
    `$nearSphere` on it with spherical distances, and the embedded store serves it about a hundred times
    faster than a 2dsphere `$near` (which reads a whole S2 face there, whatever the radius). GeoJSON
    points written by older versions are still read.
    """
    location = doc.get("location")
    if isinstance(location, dict):
        location = location.get("coordinates")
    if not isinstance(location, list) or len(location) != 2:
        return None
    return [float(location[0]), float(location[1])]


def has_exact_location(doc: Doc) -> bool:
    """Whether the document holds a location stored before locations were coarsened (it has no secret
    offset): such a position is exact and must be coarsened before anything reads it."""
    return point_of(doc) is not None and not is_secret(doc.get("location_secret"))


def age_on(birthdate: dt.date, today: dt.date) -> int:
    return today.year - birthdate.year - ((today.month, today.day) < (birthdate.month, birthdate.day))


def _too_many_attempts(wait_s: float) -> RateLimited:
    return RateLimited("Too many failed attempts; try again later", retry_after_s=wait_s, code="too_many_attempts")


def _as_date(value: Any) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else None


class _FieldProblem(ValueError):
    """What is wrong with one profile field (collected into one Invalid with every field's problem)."""


class UserService:
    def __init__(
        self, store: Store, hasher: PasswordHasher, tokens: TokenService, media: MediaStore, *, min_age: int = 18
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._tokens = tokens
        self._media = media
        # The profile's ordered photos; the first is the picture every summary shows.
        self.photos = ProfilePhotos(store, media, on_change=self.forget_summary)
        self.min_age = min_age
        # user id -> (expires at, summary). Summaries ride on every chat frame, so they are cached; a
        # profile change on another node shows here after at most SUMMARY_TTL_S.
        self._summaries: dict[int, tuple[float, dict[str, Any]]] = {}
        # Set by the presence layer: adds `status` / `last_seen` when the viewer may see them.
        self.presence_view: Callable[[int, Doc], Awaitable[dict[str, Any]]] | None = None
        # Failed sign-ins per username and per address; none (no throttling) unless the container sets it.
        self.login_throttle = LoginThrottle(0, 0, 0.0)
        self.liveness = AccountLiveness(store, self.remember_summary)
        # Ends every session of an account (a password change); the container sets it.
        self.revocations: Revocations | None = None
        # Imported here, not at the top: the rule comes from matching, which itself builds on this module.
        from services.accounts.visibility import ProfileVisibility

        self.visibility = ProfileVisibility(store)
        # How a sent position becomes the stored one; the container sets the one built from its settings.
        self.locations = LocationPrivacy.from_settings(Settings())

    # -- accounts -------------------------------------------------------------------------------------

    async def exists(self, user_id: int) -> bool:
        """Whether the account is there and not deleted (cached a few seconds: see AccountLiveness)."""
        return await self.liveness.exists(user_id)

    async def accepts(self, user_id: int, generation: int) -> bool:
        """Whether the account is there, not deleted, and its tokens of `generation` are not revoked
        (cached like `exists`, from the same read)."""
        return await self.liveness.accepts(user_id, generation)

    async def register(
        self,
        username: str,
        password: str,
        profile: dict[str, Any],
        *,
        client_ip: str | None = None,
        spend_signup: Callable[[], Awaitable[None]] | None = None,
    ) -> Doc:
        """Create an account. `spend_signup` is awaited once the request would create one (its fields are
        valid and its name free), before the password is hashed: the address's sign-up budget, which
        raises RateLimited when spent. A refused request spends nothing of it."""
        if not USERNAME_RE.fullmatch(username):
            raise Invalid(
                "Invalid username",
                fields={"username": "3 to 30 characters: letters, digits, '_', '.', '-'"},
            )
        fields = self._validate_profile(profile)
        now = dt.datetime.now(dt.UTC)
        # `username_taken` necessarily tells that an account exists; probing names through it costs the
        # address the same budget as failed sign-ins, so sign-up is no faster an oracle than sign-in.
        wait_s, booking = await self.login_throttle.attempt(None, client_ip)
        if wait_s > 0:
            raise _too_many_attempts(wait_s)
        # Fail early on a taken name without spending a hash; the unique index still decides races.
        if await self._store.users.find_one({"username_key": username.lower()}, {"_id": 1}):
            raise Conflict("Username already taken", code="username_taken", fields={"username": "already taken"})
        await self.login_throttle.succeeded(None, client_ip, booking)
        if spend_signup is not None:
            await spend_signup()
        password_hash = await self._hasher.hash(password)
        if fields.get("location") is not None:
            secret = self.locations.new_secret()
            fields["location"] = self.locations.coarsen(fields["location"], secret)
            fields["location_secret"] = secret
        doc: Doc = {
            "_id": await self._store.next_id("users"),
            "username": username,
            "username_key": username.lower(),
            "password_hash": password_hash,
            "picture": None,
            "created_at": now,
            "last_seen": None,
            "interested_in": [],
            **fields,
        }
        try:
            await self._store.users.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            raise Conflict(
                "Username already taken", code="username_taken", fields={"username": "already taken"}
            ) from None
        return doc

    async def login(self, username: str, password: str | None, *, client_ip: str | None = None) -> TokenPair:
        """A token pair for the right password; `password` None is one no account can have (too long).

        Throttled per username and per address before anything is looked up, so a throttled guess
        costs no hash, and unknown and existing usernames get the same answers at the same speed."""
        wait_s, booking = await self.login_throttle.attempt(username, client_ip)
        if wait_s > 0:
            raise _too_many_attempts(wait_s)
        doc = await self._store.users.find_one({"username_key": username.lower()})
        ok = password is not None and await self._hasher.verify(doc["password_hash"] if doc else None, password)
        if not ok or doc is None or doc.get("deleted"):
            raise Unauthorized("Invalid username or password", code="invalid_credentials")
        await self.login_throttle.succeeded(username, client_ip, booking)
        return await self._tokens.issue(int(doc["_id"]))

    async def refresh(self, refresh_token: str | None) -> TokenPair:
        """The next token pair of a refresh token's family (TokenService.rotate), unless its account was
        deleted: then the token is refused like an invalid one and nothing is issued.

        The account is read afresh rather than taken from the liveness cache: refreshing is rare, and a
        cached "alive" would mint tokens for an account deleted up to ACCOUNT_CACHE_TTL_S ago. A token
        from before the account's tokens were revoked (services/accounts/revocation.py) is refused the
        same way, before its family is looked at: presenting it is no reuse."""
        claims = self._tokens.decode(refresh_token, "refresh")
        user_id = int(claims["user_id"])
        self.liveness.forget(user_id)
        if not await self.liveness.accepts(user_id, generation_of(claims)):
            raise TokenError("Token invalid")
        return await self._tokens.rotate_claims(claims)

    async def prove_password(
        self, user_id: int, password: str | None, field: str, *, client_ip: str | None = None
    ) -> None:
        """Raise unless `password` is the signed-in user's own: 400 `wrong_password` naming `field`, or 429
        `too_many_attempts`. Throttled as a sign-in is (the username's and the address's failures, shared
        with `login`), so a stolen access token is no faster a way to guess the password; checked off the
        event loop. `password` None is one no account can have (too long)."""
        doc = await self._store.users.find_one(
            {"_id": user_id, "deleted": {"$ne": True}}, {"username": 1, "password_hash": 1}
        )
        if doc is None:
            raise TokenError("Token invalid")
        username = str(doc["username"])
        wait_s, booking = await self.login_throttle.attempt(username, client_ip)
        if wait_s > 0:
            raise _too_many_attempts(wait_s)
        if password is None or not await self._hasher.verify(doc.get("password_hash"), password):
            raise Invalid("The password is wrong", code="wrong_password", fields={field: "is wrong"})
        await self.login_throttle.succeeded(username, client_ip, booking)

    async def change_password(
        self, user_id: int, current_password: str | None, new_password: str, *, client_ip: str | None = None
    ) -> TokenPair:
        """Replace the password of a signed-in user who proves they know it, end every session of the
        account, and answer a fresh token pair for the caller. `current_password` None is one no account
        can have (too long).

        The proof is throttled as a sign-in is (the username's and the address's failures, shared with
        `login`), so a stolen access token is no faster a way to guess the password. The new hash and the
        revocation are one write: every token issued before, the caller's included, is refused from then
        on and every socket of the account closes with 4002, on every node (Revocations.revoke_user)."""
        if self.revocations is None:
            raise RuntimeError("UserService.revocations is not set")
        await self.prove_password(user_id, current_password, "current_password", client_ip=client_ip)
        password_hash = await self._hasher.hash(new_password)
        await self.revocations.revoke_user(user_id, "password changed", changes={"password_hash": password_hash})
        return await self._tokens.issue(user_id)

    # -- profiles -------------------------------------------------------------------------------------

    async def get(self, user_id: int) -> Doc:
        doc = await self._store.users.find_one({"_id": user_id, "deleted": {"$ne": True}})
        if doc is None:
            raise NotFound("User not found")
        if has_exact_location(doc):
            doc = await self.coarsen_stored_location(doc)
        return doc

    async def public_for(self, viewer_id: int, user_id: int) -> dict[str, Any]:
        """A profile as `viewer_id` may see it: only if they could meet (services/accounts/visibility.py)
        and neither blocked the other; anyone else gets the answer for a user who does not exist. The
        relation is checked before the user is looked up, so a hidden profile and a missing one also
        cost the same reads."""
        if viewer_id != user_id and (
            not await self.visibility.may_view(viewer_id, user_id) or await self.blocked_either_way(viewer_id, user_id)
        ):
            raise NotFound("User not found")
        doc = await self.get(user_id)
        profile = self.public_profile(doc)
        if self.presence_view is not None:
            profile.update(await self.presence_view(viewer_id, doc))
        return profile

    async def blocked_either_way(self, a: int, b: int) -> bool:
        # Two point reads on the (from_id, to_id) index: an `$or` of the two is a collection scan on
        # the embedded store.
        for blocker, blocked in ((a, b), (b, a)):
            if await self._store.blocks.find_one({"from_id": blocker, "to_id": blocked}, {"_id": 1}):
                return True
        return False

    async def update(
        self,
        user_id: int,
        changes: dict[str, Any],
        *,
        spend_location_change: Callable[[], Awaitable[None]] | None = None,
    ) -> Doc:
        """Apply profile changes. A new location is stored coarse; storing one that differs from the stored
        point first calls `spend_location_change` (a budget: it raises RateLimited when spent)."""
        fields = self._validate_profile(changes, partial=True)
        current = await self.get(user_id)
        if fields.get("location") is not None:
            secret = await self._location_secret(current)
            fields["location"] = self.locations.coarsen(fields["location"], secret)
            if fields["location"] == point_of(current):
                del fields["location"]  # the same coarse point: nothing changes, nothing is spent
            elif spend_location_change is not None:
                await spend_location_change()
        merged_min = fields.get("age_min", current.get("age_min"))
        merged_max = fields.get("age_max", current.get("age_max"))
        if merged_min is not None and merged_max is not None and merged_min > merged_max:
            raise Invalid("age_min is above age_max", fields={"age_min": "must not exceed age_max"})
        update: dict[str, Any] = {}
        unset: dict[str, str] = {}
        for key, value in fields.items():
            if value is None:
                unset[key] = ""
            else:
                update[key] = value
        ops: dict[str, Any] = {}
        if update:
            ops["$set"] = update
        if unset:
            ops["$unset"] = unset
        if ops:
            await self._store.users.update_one({"_id": user_id}, ops)
        self._summaries.pop(user_id, None)
        return await self.get(user_id)

    # -- locations ------------------------------------------------------------------------------------

    async def _location_secret(self, current: Doc) -> dict[str, float]:
        """The user's secret offset, drawn and stored the first time they set a location. Concurrent first
        settings agree on one: only a document without a secret takes one. It outlives a cleared location,
        so the same place always gives the same stored point."""
        secret = current.get("location_secret")
        if is_secret(secret):
            return dict(secret)
        drawn = self.locations.new_secret()
        await self._store.users.update_one(
            {"_id": current["_id"], "location_secret": secret}, {"$set": {"location_secret": drawn}}
        )
        stored = await self._store.users.find_one({"_id": current["_id"]}, {"location_secret": 1})
        if stored is None or not is_secret(stored.get("location_secret")):
            raise NotFound("User not found")
        return dict(stored["location_secret"])

    async def coarsen_stored_location(self, doc: Doc) -> Doc:
        """`doc` with its exact (pre-coarsening) location replaced, in the store too, by a coarse one.

        Documents written before locations were coarsened are migrated on read: the first read of the
        owner's profile, or discover meeting them as viewer or candidate, stores the coarse point. Of
        concurrent readers, one writes (the update names what it read); the others read back its write."""
        exact = point_of(doc)
        assert exact is not None
        secret = self.locations.new_secret()
        coarse = self.locations.coarsen(exact, secret)
        done = await self._store.users.update_one(
            {"_id": doc["_id"], "location": doc["location"], "location_secret": doc.get("location_secret")},
            {"$set": {"location": coarse, "location_secret": secret}},
        )
        if done.modified_count:
            return {**doc, "location": coarse, "location_secret": secret}
        fresh = await self._store.users.find_one({"_id": doc["_id"]})
        if fresh is None:
            raise NotFound("User not found")
        # Still exact only if a node of an earlier version wrote another exact location meanwhile.
        return await self.coarsen_stored_location(fresh) if has_exact_location(fresh) else fresh

    async def set_picture(self, user_id: int, data: bytes) -> str:
        """Make the upload the profile picture: it replaces the first photo (or is the first one)."""
        return await self.photos.replace_first(user_id, data)

    def forget_summary(self, user_id: int) -> None:
        """Drop the cached summary of a user whose picture or name changed on this node."""
        self._summaries.pop(user_id, None)

    async def summary(self, user_id: int) -> dict[str, Any]:
        """`{id, username, profile_picture}`: the seed's shape of a user inside frames; cached."""
        cached = self._summaries.get(user_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        doc = await self.liveness.read(user_id)
        if doc is None:
            raise NotFound("User not found")
        return self.remember_summary(doc)

    def cached_summary(self, user_id: int) -> dict[str, Any] | None:
        """`summary` when it needs no store read; None otherwise."""
        cached = self._summaries.get(user_id)
        return cached[1] if cached is not None and cached[0] > time.monotonic() else None

    def remember_summary(self, doc: Doc) -> dict[str, Any]:
        """Cache the summary of a user document read for another purpose (it needs `username` and
        `picture`), sparing the read `summary` would make."""
        summary = self.summary_of(doc)
        if len(self._summaries) > 50_000:
            self._summaries.clear()
        self._summaries[int(doc["_id"])] = (time.monotonic() + SUMMARY_TTL_S, summary)
        return summary

    def summary_of(self, doc: Doc) -> dict[str, Any]:
        return {
            "id": int(doc["_id"]),
            "username": doc["username"],
            "profile_picture": self._media.url(doc.get("picture")),
        }

    def public_profile(self, doc: Doc) -> dict[str, Any]:
        birthdate = _as_date(doc.get("birthdate"))
        return {
            **self.summary_of(doc),
            "display_name": doc.get("display_name"),
            "bio": doc.get("bio"),
            "age": age_on(birthdate, dt.datetime.now(dt.UTC).date()) if birthdate else None,
            "gender": doc.get("gender"),
            "photos": self.photos.urls(doc),
        }

    def own_profile(self, doc: Doc) -> dict[str, Any]:
        birthdate = _as_date(doc.get("birthdate"))
        location = point_of(doc)
        return {
            **self.public_profile(doc),
            "email": doc.get("email"),
            "birthdate": birthdate.isoformat() if birthdate else None,
            "interested_in": doc.get("interested_in") or [],
            "location": {"lat": location[1], "lon": location[0]} if location else None,
            "age_min": doc.get("age_min"),
            "age_max": doc.get("age_max"),
            "created_at": iso(doc.get("created_at")),
        }

    # -- validation of the business rules the schema cannot express -----------------------------------

    def _validate_profile(self, profile: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key in PROFILE_FIELDS:
            if key not in profile:
                continue
            try:
                out[key] = self._profile_value(key, profile[key])
            except _FieldProblem as problem:
                errors[key] = str(problem)
        if not partial and out.get("age_min") and out.get("age_max") and out["age_min"] > out["age_max"]:
            errors["age_min"] = "must not exceed age_max"
        if errors:
            raise Invalid("Invalid profile", fields=errors)
        return out

    def _profile_value(self, key: str, value: Any) -> Any:
        """A profile field as stored, or _FieldProblem saying what is wrong with it."""
        if value is None:
            return [] if key == "interested_in" else None
        if key == "birthdate":
            today = dt.datetime.now(dt.UTC).date()
            if value > today or age_on(value, today) > 120:
                raise _FieldProblem("not a plausible birth date")
            if age_on(value, today) < self.min_age:
                raise _FieldProblem(f"you must be at least {self.min_age}")
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        if key == "location":
            return [float(value["lon"]), float(value["lat"])]
        if key == "interested_in":
            return list(dict.fromkeys(value))  # order kept, duplicates dropped: matching reads it as a set
        if key in ("age_min", "age_max") and value < self.min_age:
            raise _FieldProblem(f"must be at least {self.min_age}")
        if key == "display_name":
            value = clean_line(value)
            if not has_visible(value):
                raise _FieldProblem("needs a visible character")
        elif key == "bio":
            value = clean_multiline(value)
        return value

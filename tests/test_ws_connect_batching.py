"""Conversation sockets opening at the same moment share their store reads (one query per kind for many
sockets), and each socket still gets its own answer: its status frame, or its refusal."""

from __future__ import annotations

import asyncio

from tests.support import make_conversation, seed_user, ws_connect
from tests.ws_helpers import conv_path

PAIRS = 12


def read_counts(services):
    return (
        services.users.liveness.reads.queries,
        services.presence.announcer._open_conversations.queries,
        services.chat.ids._newest_reads.queries,
    )


async def test_sockets_opening_together_share_their_reads_and_each_gets_its_own_answer(api, services):
    users = [await seed_user(services, "burst") for _ in range(2 * PAIRS)]
    pairs = [(users[i], users[i + 1]) for i in range(0, len(users), 2)]
    cids = [await make_conversation(services, a.id, b.id) for a, b in pairs]
    deleted, stranger = await seed_user(services, "gone"), await seed_user(services, "stranger")
    other = await seed_user(services, "other")
    deleted_cid = await make_conversation(services, deleted.id, other.id)
    await services.store.users.update_one({"_id": deleted.id}, {"$set": {"deleted": True}})
    before = read_counts(services)

    paths = [conv_path(cid, user) for cid, pair in zip(cids, pairs, strict=True) for user in pair]
    paths += [conv_path(deleted_cid, deleted), conv_path(cids[0], stranger)]
    sockets = await asyncio.gather(*(ws_connect(api, path) for path in paths))

    for (a, b), ws_a, ws_b in zip(pairs, sockets[0:-2:2], sockets[1:-2:2], strict=True):
        for ws, other_user in ((ws_a, b), (ws_b, a)):
            status = await ws.recv_type("status")
            assert (status["user_id"], status["username"]) == (other_user.id, other_user.username)
    assert (await sockets[-2].closed())[0] == 4002  # the deleted account, read in the same query
    assert (await sockets[-1].closed())[0] == 4001  # not a participant
    after = read_counts(services)
    sent = [b - a for a, b in zip(before, after, strict=True)]
    opened = len(paths)
    # One query per kind would be ideal; sockets arriving over several loop iterations take a few.
    assert all(1 <= count < opened // 2 for count in sent), (sent, opened)

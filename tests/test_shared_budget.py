"""With Redis, a user's message rate is one budget across every node: sending through two nodes does not
double it (services/realtime/counters.py SharedBudget), and a node that counts alone still limits."""

from __future__ import annotations

import asyncio

from tests.support import assert_error, make_conversation

RATE = {"message_rate": 2.0, "message_burst": 2}
SPACING_S = 0.15  # a send every 0.15 s, through each node in turn: 6.7/s in all, 3.3/s per node
SENDS = 20


async def test_sending_through_two_nodes_gets_one_budget_not_two(cluster_factory):
    n1, n2 = await cluster_factory(2, **RATE)
    alice = await n1.api.user("alice")
    bob = await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stored = refused = 0
    for n in range(SENDS):
        node = (n1, n2)[n % 2]
        answer = await node.api.post(f"/api/conversations/{cid}/messages/", {"content": f"m{n}"}, token=alice.access)
        if answer.status == 201:
            stored += 1
        else:
            assert_error(answer, 429, "rate_limited")
            assert float(answer.headers["Retry-After"]) > 0
            refused += 1
        await asyncio.sleep(max(0.0, started + (n + 1) * SPACING_S - loop.time()))
    elapsed = loop.time() - started
    budget = RATE["message_burst"] + RATE["message_rate"] * elapsed
    # Each node alone would let through its own burst and rate: about twice the budget. Shared, the nodes
    # may let through what they allow before a flush tells them of the debt (a send or two each).
    assert stored <= budget + 3, (stored, budget)
    assert stored >= budget - 3, (stored, budget)  # and the shared budget is not spent twice either
    assert stored + refused == SENDS


async def two_sends_through_each_node(cluster_factory, **settings):
    """Two nodes; Alice sends two messages through each at once, all accepted by each node's own bucket.
    (the nodes, Alice, the messages path)."""
    n1, n2 = await cluster_factory(2, **settings)
    alice = await n1.api.user("alice")
    bob = await n1.api.user("bob")
    cid = await make_conversation(n1.services, alice.id, bob.id)
    path = f"/api/conversations/{cid}/messages/"
    for node in (n1, n2):
        for n in range(2):
            assert (await node.api.post(path, {"content": f"x{n}"}, token=alice.access)).status == 201
    return n1, n2, alice, path


async def test_a_debt_made_on_one_node_is_paid_on_the_node_that_made_it(cluster_factory):
    # Together the nodes spent twice the burst: a debt of two sends at 0.5/s.
    n1, n2, alice, path = await two_sends_through_each_node(cluster_factory, message_rate=0.5, message_burst=2)
    await asyncio.sleep(3 * n1.services.message_budget.FLUSH_S)
    waits = [node.services.message_budget.refused_for(alice.id) for node in (n1, n2)]
    assert max(waits) > 2.0, waits  # the node whose flush found the debt refuses for it
    refused = await (n1 if waits[0] > waits[1] else n2).api.post(path, {"content": "y"}, token=alice.access)
    assert_error(refused, 429, "rate_limited")


async def test_with_the_budget_not_shared_each_node_lets_through_its_own(cluster_factory):
    settings = {"message_rate": 0.01, "message_burst": 2, "message_budget_shared": False}
    n1, n2, alice, path = await two_sends_through_each_node(cluster_factory, **settings)
    assert n1.services.message_budget is None and n2.services.message_budget is None
    # Four sends went through, twice the one budget; each node refuses only past its own burst.
    for node in (n1, n2):
        assert_error(await node.api.post(path, {"content": "y"}, token=alice.access), 429, "rate_limited")

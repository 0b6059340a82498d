"""The domain: plain async Python behind the HTTP and WebSocket edge (handlers/).

    core/       settings, the container that builds a node's services, domain errors, logs, metrics, limits
    storage/    the MongoDB client, collections and indexes, stored-document factories, embedded server, media
    realtime/   the bus between nodes, this node's sockets (hub), event envelopes, presence, typing
    chat/       conversations and messages: sending, history, read pointers, conversation metadata
    matching/   discovery, likes, passes, matches, unmatch, blocks
    accounts/   passwords, tokens, profiles, sign-in throttling
    push/       push notifications for offline users: devices, the outbox, delivery

Imports point inward: edge (handlers/) -> features (chat, matching, accounts, push) -> realtime and
storage. The container in core/ is the one place that knows every package; the rest of core/ (errors,
settings, metrics, limits) is imported from anywhere. No Tornado request or WebSocket handler reaches
this package (the hub sees a socket only as a `Peer` the edge implements): a service takes ids and
values, returns plain data or raises a domain error, and the edge turns that into a status, a frame or
a close code. push/delivery.py uses Tornado's HTTP client, as a client only, to reach push gateways.
"""

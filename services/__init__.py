"""The domain: plain async Python behind the HTTP and WebSocket edge (handlers/).

    core/       settings, the container that builds a node's services, domain errors, clock, logs, metrics,
                rate limits, the process's socket budget
    storage/    the MongoDB client, collections and indexes, stored-document factories, embedded server
    realtime/   the bus between nodes, this node's sockets (hub), event envelopes, the presence store,
                typing, close codes, the backends chosen from REDIS_URL
    chat/       conversations and messages: writer, history, views, metadata, presence announcements
    matching/   discovery, likes, passes, matches, unmatch, blocks
    accounts/   passwords, tokens, profiles, account liveness, sign-in throttling
    media/      what an upload is and where it is kept
    push/       push notifications for offline users: devices, the outbox, delivery

Imports point inward: edge (handlers/) -> features (chat, matching, accounts, media, push) -> realtime and
storage. The container in core/ is the one place that knows every package; the rest of core/ (errors,
settings, clock, metrics, limits) is imported from anywhere. No Tornado request or WebSocket handler reaches
this package (the hub sees a socket only as a `Peer` the edge implements): a service takes ids and
values, returns plain data or raises a domain error, and the edge turns that into a status, a frame or
a close code. push/delivery.py uses Tornado's HTTP client, as a client only, to reach push gateways.
"""

"""Trust and safety: reports, moderators, bans and the audit log. The rules a client sees are in
docs/security.md ("Reports, moderators and bans"); `ModerationService` (service.py) is what the edge calls.

One job per module:

    service.py    ModerationService: the facade the handlers call, and who counts as a moderator
    reports.py    filing a report: who may report whom, the reasons, the copy of the reported messages
    queue.py      the moderators' side of reports: the queue, one report with its evidence, resolving it
    bans.py       banning and unbanning an account
    messages.py   removing a message for everyone, as a moderator
    audit.py      the audit log: every moderator action, and reading it back
    roles.py      granting and revoking the moderator role (only from `server.py`, never over the API)
    paging.py     the opaque cursors of the queue and the audit log
"""

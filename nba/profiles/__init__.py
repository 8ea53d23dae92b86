"""Customer profiles: touch-point events resolved to customers, and
what is kept and computed from them.

    identity   identifiers normalised (e-mail, E.164 phone numbers), and resolved to
               customers: which events belong together, which profiles merge
    profile    one customer's profile: events checked and applied, attributes kept, the
               view rules and the learner will read, merges by replay, the JSON it is kept as
    tracking   an event checked, resolved, stored once and applied, in one transaction (the
               storage handed in as a ``ProfileRepository``)
    computed   the state of computed attributes (count, sum, avg, min, max, distinct,
               first, last, days_since over sliding windows), kept on every event, exact at
               any read; their definitions are the policy set's (``nba.policy.profile``)
    cache      hot profiles held in the process, kept consistent with other processes
    backfill   a changed definition: every stored profile rebuilt from its events

May import: the kernel modules and ``nba.policy`` (windows, and CEL for filters). Storage and
the service wire it in; decisions read profiles through the cache.
"""

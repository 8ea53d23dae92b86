"""The decision pipeline: from a Decide request's context to ranked, reserved, recorded offers.

    screening     eligibility, suppressions, contact caps and budgets, one verdict per offer
    contacts      contact history: the per-customer counters caps and suppressions read
    arbitration   the one function that weighs value against likelihood (capped multiplier)
    reservations  budget units claimed for offers shown (in process, or shared in Redis)
    decider       the Decide pipeline top to bottom, and the decision record it produces

May import: the kernel modules, ``bandit``, ``nba.policy`` and ``nba.learning``. Nothing of
storage or service: the decider is handed its log and contact history by the composition
root (``nba.service.server``).
"""

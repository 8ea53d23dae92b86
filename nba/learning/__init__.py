"""Learning from responses: the feedback intake and the loop that feeds the contextual bandit.

    feedback  Feedback requests checked and resolved against their decision: outcomes, reward
              windows, the pair state (shown, clicked, converted) and the reward it yields
    loop      the learning loop: builds the learner from settings, applies learning events,
              snapshots and restores its state

May import: the kernel modules and ``bandit``. Nothing of policy, decision, storage or service.
"""

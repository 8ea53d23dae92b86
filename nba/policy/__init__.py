"""The policy layer: what marketers own, as files, checked before it can be published.

    offers       offers, groups, identifiers and their dates
    policies     eligibility rules, suppressions, contact caps, budgets, weights, engagement
    schema       the declared context schema (fields, types) and pruning of a context to it
    rules        CEL rules compiled in batches, the CEL activation built from a context
    rule_cost    the static cost check that refuses a rule too expensive to run per decision
    checks       static checks of a whole set: types, references, sample contexts
    policy_set   the compiled set: offers by channel, rule batches, what it needs; its hash
    loading      a set read from files (YAML), validated and compiled all or nothing
    problems     validation errors told the way a marketer can act on them
    sandbox      validation in a child process, so a hostile set cannot stall the server
    profile      the profile: section: identifier kinds, event types, attributes, computed
                 attributes, activities, relationships (customer profiles)

May import: the kernel modules at ``nba``'s top (errors, records, clock, ids, inputs, days, metrics,
config, yaml_loader) and ``bandit``. Nothing of decision, learning, storage or service.
"""

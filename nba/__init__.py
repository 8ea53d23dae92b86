"""nba: a next-best-action decisioning service.

Channel systems call ``Decide`` over gRPC and get ranked offers; campaigns report outcomes
with ``Feedback`` and a contextual bandit (``bandit``) learns from each at once; every
decision is logged with its propensities for offline evaluation.

The package is laid out by part (README, "Layout"): the kernel at this level (errors,
records, inputs, config, clock, ids, days, metrics, yaml_loader), which every part may
import; the domain (``policy``, ``learning``, ``decision``) and ``storage`` below the shell
(``service``) and the command line (``cli``); ``evaluation`` and ``simulation`` beside them.
Each part's ``__init__`` says what it holds and what it may import; tests/test_layout.py
holds the tree to it.
"""

__version__ = "0.1.0"

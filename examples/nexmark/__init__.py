"""Nexmark on malstrom: the auction-site event generator and the standard queries.

Import with ``examples/`` on ``sys.path`` (``PYTHONPATH=examples``):

- :mod:`nexmark.model`: the events (``Person``, ``Auction``, ``Bid``);
- :mod:`nexmark.generator`: the deterministic generator and its partitioned source;
- :mod:`nexmark.common`: the event stream every query starts from;
- :mod:`nexmark.q0` ... :mod:`nexmark.q8`: the queries, each a module with ``query(events)``
  (the operators) and ``build(provider, ...)`` (a complete job).

``python -m nexmark QUERY [--events N] [--workers W]`` (from ``examples/``) runs one query.
"""

"""Connectors to external systems, each behind its own extra:

- :mod:`malstrom.connectors.postgres`: ``PostgresSink`` (``pip install 'malstrom[postgres]'``).
"""

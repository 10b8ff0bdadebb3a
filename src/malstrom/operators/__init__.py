"""Operator implementations (internal). Users reach them through :class:`malstrom.Stream`."""

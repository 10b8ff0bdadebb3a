"""The engine core every worker runs: batches, in-band messages, epochs, the operator base
class, the build context and the graph a job is built into.

Internal: nothing here is public API. It imports only :mod:`malstrom.types` and
:mod:`malstrom.errors`; everything else in malstrom builds on it.
"""

"""The optional C extensions; everything else is in pyproject.toml.

- ``malstrom.keyed._croute``: the distributor's router (fallback: malstrom.keyed._route);
- ``malstrom.engine._cpack``: packing record columns for the wire (fallback:
  malstrom.engine.packing).

``optional=True``: without a compiler (or Python headers) the install still succeeds and
malstrom does the same in pure Python, with identical results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "malstrom.keyed._croute",
            sources=["src/malstrom/keyed/_croute.c"],
            optional=True,
        ),
        Extension(
            "malstrom.engine._cpack",
            sources=["src/malstrom/engine/_cpack.c"],
            optional=True,
        ),
    ]
)

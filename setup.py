"""The optional C router (malstrom.keyed._croute); everything else is in pyproject.toml.

``optional=True``: without a compiler (or Python headers) the install still succeeds and
malstrom routes records in pure Python (malstrom.keyed._route), with identical results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "malstrom.keyed._croute",
            sources=["src/malstrom/keyed/_croute.c"],
            optional=True,
        )
    ]
)

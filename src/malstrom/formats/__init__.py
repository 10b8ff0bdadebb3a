"""File formats for the file sources and sinks.

Pass one as ``format=`` to :class:`~malstrom.sources.FileSource`,
:class:`~malstrom.sources.DirectorySource`, :class:`~malstrom.sinks.FileSink` or
:class:`~malstrom.sinks.DirectorySink`::

    from malstrom.formats import Csv, JsonLines, Lines, Parquet

    FileSource("orders/*.csv", format=Csv(types={"amount": float}))   # records: dicts
    DirectorySink("out/", format=Parquet())                           # typed columns

- :class:`Lines`: plain text, one value per line (the default everywhere).
- :class:`Csv`: a header row names the columns (it is not a record); records are dicts.
- :class:`JsonLines`: one JSON value per line.
- :class:`Parquet`: typed columns through pyarrow (``pip install 'malstrom[parquet]'``).
"""

from malstrom.formats._base import Format
from malstrom.formats._parquet import Parquet
from malstrom.formats._text import Csv, JsonLines, Lines

__all__ = ["Csv", "Format", "JsonLines", "Lines", "Parquet"]

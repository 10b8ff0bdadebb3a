"""A snapshot store that stops answering: ``write_blob`` of versions from ``hang_from`` on
never returns (a hung network store, a database stuck on damaged files)."""

from __future__ import annotations

import os
import time
from typing import Any

from malstrom.snapshot import LocalDiskPersistence
from malstrom.snapshot._backend import BlobInfo


class HangingStore(LocalDiskPersistence):
    def __init__(self, path: str | os.PathLike[str], hang_from: int = 1) -> None:
        super().__init__(path)
        self.hang_from = hang_from

    def __repr__(self) -> str:
        return f"HangingStore({str(self.path)!r})"

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        if version >= self.hang_from:
            time.sleep(3600)
        return super().write_blob(version, name, data)

    def __reduce__(self) -> Any:
        return (HangingStore, (self.path, self.hang_from))

"""Named records in one JSON file: what the file stores of users and of service accounts share.

The file is `{"version": 1, "<kind>": {"<name>": {...}, ...}}`. A running service reads it with
`get`, which costs one `os.stat` and parses the file again only when its identity, size or
modification time differ from what was last read. The commands write it: each read-change-write
holds a lock on the file's directory, and a write replaces the file atomically (a temporary
file renamed over it), so readers never see half a file and two commands run at once cannot
undo each other's change.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

FILE_VERSION = 1
# Reading a records file failed, or what it holds is not JSON of the expected shape.
UNREADABLE_ERRORS = (OSError, ValueError)

logger = logging.getLogger(__name__)

R = TypeVar("R")


class NameTakenError(Exception):
    """A name that another kind of record holds (users and clients share the names of token
    subjects): the write was refused and the file left as it was."""


class RecordFile(Generic[R]):
    """Records of one kind (`kind` names the file's top-level object: "users", "clients"),
    turned from and into JSON by `parse` (ValueError for a wrong shape) and `dump`."""

    def __init__(
        self,
        path: Path,
        kind: str,
        parse: Callable[[str, Any], R],
        dump: Callable[[R], dict[str, Any]],
    ) -> None:
        self.path = path
        self._kind = kind
        self._parse = parse
        self._dump = dump
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime in ns)
        self._records: dict[str, R] = {}  # as many as the file holds, replaced whole

    def current(self, name: str) -> R | None:
        """The record `name` as the file holds it now (re-read only when it changed)."""
        self._reload_if_changed()
        return self._records.get(name)

    def read_all(self) -> dict[str, R]:
        """Every record, read from the file now; OSError or ValueError when it cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        document = json.loads(text)
        if not isinstance(document, dict) or not isinstance(document.get(self._kind), dict):
            raise ValueError(f"expected an object with a {self._kind!r} object")
        return {name: self._parse(name, entry) for name, entry in document[self._kind].items()}

    def write_all(self, records: dict[str, R]) -> None:
        """Write a temporary file next to the real one, then rename it over (atomic on POSIX).
        The file is made 0600: it holds hashes."""
        document = {
            "version": FILE_VERSION,
            self._kind: {name: self._dump(record) for name, record in sorted(records.items())},
        }
        prefix = f".{self._kind}-"
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=prefix, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def change(self, name: str, edit: Callable[[R], R | None]) -> bool:
        """Under the lock, replace record `name` by `edit(record)`, or remove it when that
        returns None; False, and the file untouched, when there is no such record."""
        with self.locked():
            records = self.read_all()
            if name not in records:
                return False
            edited = edit(records.pop(name))
            if edited is not None:
                records[name] = edited
            self.write_all(records)
        return True

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the file's directory: the file itself is replaced by each
        write, so a lock on it would not outlive the write. Released when the process ends.
        Files in one directory (the default users and clients files) share the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _reload_if_changed(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            self._seen, self._records = None, {}
            return
        seen = (status.st_ino, status.st_size, status.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen  # this version is read once, whether or not it parses
        try:
            self._records = self.read_all()
        except UNREADABLE_ERRORS:
            # Keep serving the last good version; a hand edit gone wrong must not lock out all.
            kind, path = self._kind, self.path
            logger.warning("%s file %s is unreadable; keeping the previous %s", kind, path, kind)

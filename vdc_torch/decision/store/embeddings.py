"""Model embeddings kept next to a fingerprint cache (``<cache>.embeddings``): a frozen encoder does not embed the
same images again on every run, and a retrained one finds nothing and embeds afresh.

One SQLite file. Each row: the encoder's identity (:func:`~vdc_torch.fingerprints.encoder.encoder_identity`), the
image's content digest (its ``byte_digest``), which embedding (0: the image's view; k >= 1: its k-th calibration
copy), the float32 vector and, for a copy, the copy's 32×32 thumbnail. Only the :data:`KEEP_ENCODERS` most recently
used encoders are kept — a model retrained every drop is a new encoder each time, and its old embeddings are of no
further use. As with the cache, a file that cannot be used is ignored with a warning and never written or deleted
(it may be the user's); values are raw numbers checked for their length, never unpickled.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from vdc_torch.fingerprints.table import THUMB_SIDE

log = logging.getLogger(__name__)

#: Encoders whose embeddings are kept (the most recently used).
KEEP_ENCODERS = 2
#: The schema's version, in SQLite's ``user_version``.
SCHEMA_VERSION = 1
_THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
_CHUNK = 500  # digests per query (SQLite's variable limit is 999 on old builds)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT NOT NULL, digest BLOB NOT NULL, copy INTEGER NOT NULL, vector BLOB NOT NULL, thumb BLOB,
    PRIMARY KEY (encoder, digest, copy)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS encoders (encoder TEXT PRIMARY KEY, used REAL NOT NULL);
"""

#: What one image holds: its view's embedding, and its calibration copies as ``(embedding, thumbnail)`` pairs.
Stored = tuple[np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]


def embeddings_path(cache_path: str | os.PathLike[str]) -> Path:
    """Where the embeddings of the fingerprint cache at ``cache_path`` are kept: ``<cache>.embeddings``."""
    path = Path(os.path.expanduser(str(cache_path)))
    return path.with_name(path.name + ".embeddings")


class EmbeddingStore:
    """The embeddings file at ``path`` (created on the first :meth:`put`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.usable = True
        if self.path.is_symlink() and not self.path.exists():
            self.usable = False  # a dangling link: writing would create its target somewhere else
            log.warning("ignoring the encoder embeddings %s: a link to nothing (not written either)", self.path)
        elif self.path.exists():
            try:
                with closing(self._connect(read_only=True)) as db:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if (version, tables) != (0, set()) and (  # an empty database: one whose first put was cut short
                        version != SCHEMA_VERSION or not {"embeddings", "encoders"} <= tables):
                    raise sqlite3.DatabaseError(f"not an embeddings file of version {SCHEMA_VERSION}")
            except (sqlite3.Error, OSError) as exc:
                self.usable = False
                log.warning("ignoring the encoder embeddings %s (not written either; delete it to use this path): "
                            "%s", self.path, exc)

    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def get(self, encoder: str, digests: Sequence[bytes]) -> dict[bytes, Stored]:
        """What is kept of these images for this encoder (images with nothing kept are left out); marks the encoder
        as used."""
        found: dict[bytes, Stored] = {}
        if not self.usable or not self.path.exists() or not digests:
            return found
        try:
            with closing(self._connect(read_only=True)) as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "embeddings" not in tables:
                    return found
                for start in range(0, len(digests), _CHUNK):
                    part = list(digests[start:start + _CHUNK])
                    marks = ",".join("?" * len(part))
                    rows = db.execute(f"SELECT digest, copy, vector, thumb FROM embeddings WHERE encoder = ? AND "
                                      f"digest IN ({marks}) ORDER BY digest, copy", [encoder, *part]).fetchall()
                    for digest, copy, vector, thumb in rows:
                        _take_row(found, digest, copy, vector, thumb)
            if found:
                with closing(self._connect()) as db:
                    db.execute("UPDATE encoders SET used = ? WHERE encoder = ?", (time.time(), encoder))
        except sqlite3.Error as exc:
            log.warning("could not read the encoder embeddings %s: %s", self.path, exc)
            return {}
        return found

    def put(self, encoder: str, kept: dict[bytes, Stored]) -> None:
        """Keep these images' embeddings for this encoder (replacing what was kept of them), and forget every encoder
        but the :data:`KEEP_ENCODERS` most recently used."""
        if not self.usable or not kept:
            return
        rows = []
        for digest, (view, copies) in kept.items():
            if view is not None:
                rows.append((encoder, digest, 0, np.asarray(view, np.float32).tobytes(), None))
            rows += [(encoder, digest, k + 1, np.asarray(vector, np.float32).tobytes(),
                      np.ascontiguousarray(thumb, np.uint8).tobytes()) for k, (vector, thumb) in enumerate(copies)]
        try:
            with closing(self._connect()) as db:
                db.execute("BEGIN IMMEDIATE")  # the schema, the rows and the pruning in one transaction
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)
                    db.execute("INSERT OR REPLACE INTO encoders VALUES (?, ?)", (encoder, time.time()))
                    old = [r[0] for r in db.execute(
                        "SELECT encoder FROM encoders ORDER BY used DESC LIMIT -1 OFFSET ?", (KEEP_ENCODERS,))]
                    for name in old:
                        db.execute("DELETE FROM embeddings WHERE encoder = ?", (name,))
                        db.execute("DELETE FROM encoders WHERE encoder = ?", (name,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            log.warning("could not keep the encoder embeddings in %s: %s", self.path, exc)


def _take_row(found: dict[bytes, Stored], digest: object, copy: object, vector: object, thumb: object) -> None:
    """Add one stored row to ``found``; a row of the wrong types or sizes (damaged or forged) is left out."""
    if not isinstance(digest, bytes) or not isinstance(copy, int) or copy < 0:
        return
    values = _vector(vector)
    if values is None:
        return
    entry = found.setdefault(digest, (None, []))
    if copy == 0:
        found[digest] = (values, entry[1])
    elif isinstance(thumb, bytes) and len(thumb) == _THUMB_BYTES:
        entry[1].append((values, np.frombuffer(thumb, np.uint8).reshape(THUMB_SIDE, THUMB_SIDE, 3)))


def _vector(blob: object) -> np.ndarray | None:
    """A stored float32 vector, or ``None`` for one that is not (a damaged or forged row)."""
    if not isinstance(blob, bytes) or not blob or len(blob) % 4:
        return None
    values = np.frombuffer(blob, np.float32)
    return values if np.isfinite(values).all() else None

"""The schema of a manifest is verified, not trusted: checked against the expected one before any value is read.

SQLite runs code stored in the file itself: a column can be ``GENERATED ALWAYS AS (hex(zeroblob(...)))`` (a 200 KB
file whose ``meta.value`` evaluates to gigabytes when read), and triggers and views hold SQL too;
``trusted_schema=OFF`` does not stop built-in functions. So before a single row is read, :func:`verify_schema`
compares the whole schema with the one :mod:`~vdc_torch.decision.store.manifest` writes, built in an in-memory
database from the same ``CREATE`` statements:

* the objects in ``sqlite_master`` are exactly the expected tables and their ``sqlite_autoindex_*`` indexes — any
  trigger, view, extra index or extra table is refused (``checksum`` may be absent: files saved before it existed);
* each table's stored ``CREATE`` statement equals the expected one (whitespace-normalised), so no ``WITHOUT ROWID``,
  ``CHECK``, collation, default or generated column slips in;
* each table's ``PRAGMA table_xinfo`` rows (name, type, not-null, default, primary key, hidden) equal the expected
  ones; a hidden column (``hidden != 0``: generated, stored or virtual) is named in the error.

Reading ``sqlite_master`` and ``table_xinfo`` evaluates nothing. Every deviation is collected into one
:class:`ManifestError` naming the manifest and what differs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping

from vdc_torch.errors import ManifestError

#: Tables a manifest may lack (written by older versions).
OPTIONAL_TABLES = frozenset({"checksum"})

_Object = tuple[str, str, str, str | None]  # type, name, table, normalised CREATE text


def _normalised(sql: object) -> str | None:
    return " ".join(sql.split()) if isinstance(sql, str) else None


def _objects(connection: sqlite3.Connection) -> dict[str, _Object]:
    rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {str(name): (str(kind), str(name), str(table), _normalised(sql)) for kind, name, table, sql in rows}


def _columns(connection: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    """``(name, type, notnull, dflt_value, pk, hidden)`` of each column, hidden ones included."""
    quoted = '"' + table.replace('"', '""') + '"'
    return [tuple(row[1:7]) for row in connection.execute(f"PRAGMA table_xinfo({quoted})").fetchall()]


class _Expected:
    """The objects and columns the ``CREATE`` script of one format version makes (built once, in memory)."""

    def __init__(self, script: str) -> None:
        with contextlib.closing(sqlite3.connect(":memory:")) as connection:
            connection.executescript(script)
            self.objects = _objects(connection)
            self.tables = sorted(name for name, obj in self.objects.items() if obj[0] == "table")
            self.columns = {table: _columns(connection, table) for table in self.tables}


_EXPECTED: dict[str, _Expected] = {}


def _expected(script: str) -> _Expected:
    if script not in _EXPECTED:
        _EXPECTED[script] = _Expected(script)
    return _EXPECTED[script]


def schema_objects(connection: sqlite3.Connection, name: str) -> dict[str, str]:
    """``{name: type}`` of every object in the file's schema (one :class:`ManifestError` if it cannot be read)."""
    try:
        return {obj[1]: obj[0] for obj in _objects(connection).values()}
    except sqlite3.Error as exc:
        raise ManifestError(f"{name} is not a readable SQLite database: its schema cannot be read ({exc})") from exc


def verify_schema(connection: sqlite3.Connection, name: str, scripts: Mapping[int, str]) -> int:
    """Check the file's schema against the expected one; returns the format version whose schema it has.

    ``scripts``: the ``CREATE`` script of each readable format version. The version compared with is the one whose
    distinctive table (one no other version has) the file holds; a file with none of them is not a manifest.
    """
    try:
        found = _objects(connection)
        tables = {n: o[0] for n, o in found.items() if o[0] in ("table", "view")}
        listed = ", ".join(sorted(tables)) or "none"
        not_ours = f"{name} is an SQLite database but not a vdc_torch manifest (its tables: {listed})"
        if tables.get("meta") != "table":
            raise ManifestError(not_ours)
        version = _version_of(tables, scripts)
        if version is None:
            raise ManifestError(not_ours)
        expected = _expected(scripts[version])
        wanted = {n: o for n, o in expected.objects.items()
                  if not (o[2] in OPTIONAL_TABLES and o[2] not in found)}
        differences = _differences(connection, found, wanted, expected)
    except sqlite3.Error as exc:
        raise ManifestError(f"{name} is not a readable SQLite database: its schema cannot be read ({exc})") from exc
    if differences:
        head = not_ours if set(tables) != {n for n, o in wanted.items() if o[0] == "table"} else (
            f"{name} is refused: its schema is not that of a vdc_torch manifest (format version {version})")
        shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
        raise ManifestError(f"{head}: {shown}")
    return version


def _version_of(tables: Mapping[str, str], scripts: Mapping[int, str]) -> int | None:
    own = {v: set(_expected(s).tables) for v, s in scripts.items()}
    for version, names in own.items():
        others = set().union(*(n for v, n in own.items() if v != version))
        if any(t in tables for t in names - others):
            return version
    return None


def _differences(connection: sqlite3.Connection, found: Mapping[str, _Object], wanted: Mapping[str, _Object],
                 expected: _Expected) -> list[str]:
    """Each way the file's schema differs from ``wanted``, in words (generated columns and extra objects first)."""
    out, declared = [], []
    for obj_name, obj in sorted(found.items()):
        if obj_name not in wanted:
            out.append(f"{obj[0]} {obj_name!r} is not part of a manifest")
    for obj_name, obj in sorted(wanted.items()):
        got = found.get(obj_name)
        if got is None:
            out.append(f"{obj[0]} {obj_name!r} is missing")
        elif got[0] != obj[0] or got[2] != obj[2]:
            out.append(f"{obj_name!r} is a {got[0]} on {got[2]!r}, expected a {obj[0]} on {obj[2]!r}")
        elif got[3] != obj[3]:
            declared.append(f"{obj[0]} {obj_name!r} is declared {_short(got[3])}, expected {_short(obj[3])}")
    for table in expected.tables:
        if table not in wanted or found.get(table, ("",))[0] != "table":
            continue
        columns = _columns(connection, table)
        for column in columns:
            if column[5]:
                kind = {2: "a virtual generated", 3: "a stored generated"}.get(int(str(column[5])), "a hidden")
                out.insert(0, f"column {table}.{column[0]} is {kind} column (computed by SQL in the file)")
        if columns != expected.columns[table]:
            got_names = [str(c[0]) for c in columns]
            want_names = [str(c[0]) for c in expected.columns[table]]
            detail = (f"columns {got_names}, expected {want_names}" if got_names != want_names
                      else "column types, constraints or defaults that differ from the expected ones")
            out.append(f"table {table!r} has {detail}")
    return out + declared


def _short(sql: str | None, limit: int = 160) -> str:
    if sql is None:
        return "without SQL"
    return repr(sql if len(sql) <= limit else sql[:limit] + "...")

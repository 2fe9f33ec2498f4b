"""The index of a sharded manifest: a small JSON file naming immutable shard files, each a normal manifest.

Layout (``M`` is the path the user names)::

    M                    the index (JSON, below), replaced atomically under the lock on M.lock
    M.lock               the lock every saver of M takes (the same as for a single-file manifest)
    M.shards/<32 hex>.vdc  the shards: version-2 manifests written by save_manifest's machinery, never rewritten;
                         a name is a random UUID, so it is never reused

The index::

    {"format": "vdc_torch-sharded-manifest", "format_version": 1, "fingerprint_version": 17,
     "lineage": "<32 hex>", "saved_at": "...", "samples": 1010000, "meta": {<the gate's meta>},
     "shards": [{"file": "<32 hex>.vdc", "samples": 1000000, "first": 0, "last": 999999, "bytes": 3145728000,
                 "checksum": "<the shard's own content checksum>"}, ...],
     "checksum": "blake2b:<hex of the canonical JSON of everything else>"}

``first``/``last`` are the smallest and largest ``sample_index`` of a shard, so an append can number its rows past
every stored one without opening a shard. ``lineage`` is drawn when a fresh index is written and kept by appends
and compaction: a gate appends to an index of the lineage it loaded or saved, and writes a fresh one (its whole
reference, one shard) otherwise. ``checksum`` of a shard is the content checksum its SQLite file carries (over its
meta and every part's digest), so a swapped, replaced or foreign shard — even a valid manifest — is refused by name.

The index is untrusted input like any manifest: its size is capped, every field is type-checked, a shard name must
be exactly ``<32 hex>.vdc`` (no ``..``, no ``/``, no absolute path can pass), and loading opens no shard that is a
symbolic link or lies outside the shard folder. This module holds the index format and the files of the shard
folder; :mod:`vdc_torch.decision.store.manifest` reads and writes the shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat as stat_module
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdc_torch.decision.store.files import INDEX_MAGIC, _file_mode, _fsync_dir
from vdc_torch.errors import ManifestError

log = logging.getLogger(__name__)

INDEX_FORMAT = "vdc_torch-sharded-manifest"
INDEX_VERSION = 1
#: The shard folder of ``M`` is ``M`` + this.
SHARD_FOLDER_SUFFIX = ".shards"
SHARD_NAME = re.compile(r"[0-9a-f]{32}\.vdc")
#: Temp files of shards being written (mkstemp's pattern, as for single files).
_SHARD_TEMP = re.compile(r"\.[0-9a-f]{32}\.vdc\.[a-z0-9_]{8}\.tmp(-journal)?")
#: An index of 100k shards is ~20 MB; anything larger is not one of ours.
MAX_INDEX_BYTES = 64 << 20
MAX_SHARDS = 100_000
_SQLITE_MAGIC = b"SQLite format 3\x00"
_INDEX_KEYS = {"format", "format_version", "fingerprint_version", "lineage", "saved_at", "samples", "meta", "shards",
               "checksum"}
_SHARD_KEYS = {"file", "samples", "first", "last", "bytes", "checksum"}
_MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class ShardRecord:
    """What an index says about one shard."""

    file: str
    samples: int
    first: int  # smallest sample_index (0 for an empty shard)
    last: int  # largest sample_index (-1 for an empty shard)
    bytes: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "samples": self.samples, "first": self.first, "last": self.last,
                "bytes": self.bytes, "checksum": self.checksum}


@dataclass
class ShardIndex:
    """A parsed index."""

    fingerprint_version: int
    lineage: str
    meta: dict[str, Any]
    shards: list[ShardRecord] = field(default_factory=list)
    saved_at: str = ""

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def last_sample_index(self) -> int:
        """The largest stored ``sample_index`` (-1 when empty)."""
        return max((s.last for s in self.shards if s.samples), default=-1)


def shard_folder(index_path: str | os.PathLike[str]) -> Path:
    """``<index>.shards`` beside the index file."""
    target = Path(index_path)
    return target.with_name(target.name + SHARD_FOLDER_SUFFIX)


def new_lineage() -> str:
    return uuid.uuid4().hex


def new_shard_name() -> str:
    """A name no shard had before: a random UUID (122 random bits)."""
    return f"{uuid.uuid4().hex}.vdc"


def _digest(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return "blake2b:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def index_bytes(index: ShardIndex) -> bytes:
    """The index as written: ``INDEX_MAGIC`` (of files.py: what tells an index, or its temp file, from a user's
    file) first, then the other fields, the checksum last."""
    body = {
        "format": INDEX_FORMAT, "format_version": INDEX_VERSION, "fingerprint_version": index.fingerprint_version,
        "lineage": index.lineage, "saved_at": index.saved_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "samples": index.samples, "meta": index.meta, "shards": [s.to_json() for s in index.shards],
    }
    text = json.dumps({**body, "checksum": _digest(body)}, indent=None, ensure_ascii=True, allow_nan=False)
    data = text.encode()
    assert data.startswith(INDEX_MAGIC)
    return data + b"\n"


def looks_like_index(header: bytes) -> bool:
    """Whether a file starting with ``header`` is meant as JSON (an index) rather than SQLite or an image."""
    return header.lstrip(b" \t\r\n").startswith(b"{")


def _int(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value <= _MAX_INT


def parse_index(data: bytes, name: str) -> ShardIndex:
    """The index in ``data``, checked field by field; anything else is one :class:`ManifestError` naming ``name``."""
    from vdc_torch.fingerprints.table import FINGERPRINT_VERSION, READABLE_FINGERPRINT_VERSIONS

    if len(data) > MAX_INDEX_BYTES:
        raise ManifestError(f"{name} is not a vdc_torch manifest: a JSON file of more than {MAX_INDEX_BYTES} bytes")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{name} is not a vdc_torch manifest (not an SQLite file, and not a valid sharded "
                            f"manifest index: {type(exc).__name__}: {exc})") from None
    if not isinstance(parsed, dict) or parsed.get("format") != INDEX_FORMAT:
        found = parsed.get("format") if isinstance(parsed, dict) else type(parsed).__name__
        raise ManifestError(f"{name} is a JSON file but not a vdc_torch sharded manifest index (format {found!r})")
    version = parsed.get("format_version")
    if type(version) is not int or version != INDEX_VERSION:
        hint = "upgrade vdc_torch to read it" if type(version) is int and version > INDEX_VERSION else "rebuild it"
        raise ManifestError(f"{name} has sharded manifest index version {version!r}; this vdc_torch reads version "
                            f"{INDEX_VERSION} ({hint})")
    if set(parsed) != _INDEX_KEYS:
        raise ManifestError(f"{name} is corrupted: its index has the fields {sorted(parsed)}, expected "
                            f"{sorted(_INDEX_KEYS)}")
    body = {k: v for k, v in parsed.items() if k != "checksum"}
    try:
        expected = _digest(body)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{name} is corrupted: its index holds a value JSON cannot write back ({exc})") from None
    if parsed["checksum"] != expected:
        raise ManifestError(f"{name} is corrupted: its index does not match its checksum (damaged or edited after "
                            "saving)")
    fingerprint_version = parsed["fingerprint_version"]
    if isinstance(fingerprint_version, bool) or fingerprint_version not in READABLE_FINGERPRINT_VERSIONS:
        raise ManifestError(f"{name} holds fingerprints of version {fingerprint_version!r}, this vdc_torch computes "
                            f"version {FINGERPRINT_VERSION} and reads "
                            f"{', '.join(map(str, READABLE_FINGERPRINT_VERSIONS))}: rebuild the manifest (`vdc index`)")
    lineage, meta, shards = parsed["lineage"], parsed["meta"], parsed["shards"]
    if not isinstance(lineage, str) or not re.fullmatch(r"[0-9a-f]{32}", lineage):
        raise ManifestError(f"{name} is corrupted: its index's lineage {lineage!r} is not 32 hex digits")
    if not isinstance(meta, dict) or not isinstance(parsed["saved_at"], str):
        raise ManifestError(f"{name} is corrupted: its index's meta is not a JSON object")
    if not isinstance(shards, list) or len(shards) > MAX_SHARDS:
        raise ManifestError(f"{name} is corrupted: its index's shards are not a list of at most {MAX_SHARDS}")
    records: list[ShardRecord] = []
    seen: set[str] = set()
    for number, entry in enumerate(shards):
        if not isinstance(entry, dict) or set(entry) != _SHARD_KEYS:
            raise ManifestError(f"{name} is corrupted: shard #{number} of its index is malformed")
        file = entry["file"]
        if not isinstance(file, str) or not SHARD_NAME.fullmatch(file):
            raise ManifestError(f"{name} is refused: shard #{number} is named {file!r}, not <32 hex digits>.vdc "
                                "inside its shard folder (a path that could leave the folder is never opened)")
        if file in seen:
            raise ManifestError(f"{name} is corrupted: shard {file!r} is named twice")
        seen.add(file)
        samples, first, last, size = entry["samples"], entry["first"], entry["last"], entry["bytes"]
        if not (_int(samples) and _int(first) and _int(last, -1) and _int(size, 1)) or (
                samples and first > last) or (not samples and (first, last) != (0, -1)):
            raise ManifestError(f"{name} is corrupted: shard {file!r} has a malformed record {entry!r}")
        if not isinstance(entry["checksum"], str) or len(entry["checksum"]) > 200:
            raise ManifestError(f"{name} is corrupted: shard {file!r} has no checksum")
        records.append(ShardRecord(file, samples, first, last, size, entry["checksum"]))
    index = ShardIndex(parsed["fingerprint_version"], lineage, meta, records, parsed["saved_at"])
    if parsed["samples"] != index.samples:
        raise ManifestError(f"{name} is corrupted: its index gives {parsed['samples']!r} samples, its shards "
                            f"{index.samples}")
    return index


def read_index(path: Path, name: str) -> tuple[ShardIndex, bytes]:
    """Parse the index file at ``path``; returns it with its bytes (to tell whether it was replaced since)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"manifest {name} does not exist") from None
    except OSError as exc:
        raise ManifestError(f"manifest {name} cannot be read ({exc.strerror or exc})") from exc
    return parse_index(data, name), data


def write_index(target: Path, index: ShardIndex) -> None:
    """Atomically replace ``target`` by ``index``: a complete temp file beside it, fsynced, renamed, folder fsynced.

    The caller holds the exclusive lock of ``target``.
    """
    data = index_bytes(index)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _file_mode(target))
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def is_index_file(path: Path) -> bool:
    """A regular file (not followed through a link) starting with :data:`INDEX_MAGIC`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return stat_module.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(INDEX_MAGIC)) == INDEX_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def check_shard_folder(folder: Path, name: str) -> None:
    """Refuse a shard folder that is a symbolic link or not a folder (nothing is followed out of it)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ManifestError(f"{name}: its shard folder {str(folder)!r} cannot be read ({exc.strerror or exc})") from exc
    if stat_module.S_ISLNK(st.st_mode):
        raise ManifestError(f"{name} is refused: its shard folder {str(folder)!r} is a symbolic link (a shard is "
                            "never read through one)")
    if not stat_module.S_ISDIR(st.st_mode):
        raise ManifestError(f"{name}: its shard folder {str(folder)!r} is not a folder")


def shard_path(folder: Path, record: ShardRecord, name: str) -> Path:
    """The shard file of ``record``, after checking it is a regular file inside ``folder`` (not a link)."""
    if not SHARD_NAME.fullmatch(record.file):  # parse_index checked it; a record made elsewhere is checked too
        raise ManifestError(f"{name} is refused: shard name {record.file!r} could leave its shard folder")
    path = folder / record.file
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ShardMissing(record.file) from None
    except OSError as exc:
        raise ManifestError(f"{name}: shard {str(path)!r} cannot be read ({exc.strerror or exc})") from exc
    if stat_module.S_ISLNK(st.st_mode):
        raise ManifestError(f"{name} is refused: shard {str(path)!r} is a symbolic link (never followed)")
    if not stat_module.S_ISREG(st.st_mode):
        raise ManifestError(f"{name} is refused: shard {str(path)!r} is not a regular file")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise ManifestError(f"{name} is refused: shard {str(path)!r} lies outside its shard folder")
    if st.st_size != record.bytes:
        raise ManifestError(f"{name}: shard {str(path)!r} is not the one its index names ({st.st_size} bytes, the "
                            f"index says {record.bytes}): swapped, replaced or damaged")
    return path


class ShardMissing(Exception):
    """Internal: a shard the index names is not there (removed by a compaction since the index was read?)."""

    def __init__(self, file: str) -> None:
        super().__init__(file)
        self.file = file


def _ours(path: str, magics: tuple[bytes, ...]) -> bool:
    """A regular file (not a link) that is empty or starts with one of ``magics``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, max(len(m) for m in magics))
    except OSError:
        return False
    finally:
        os.close(fd)
    return not head or any(head.startswith(m) for m in magics)


def remove_unnamed_shards(folder: Path, keep: set[str]) -> int:
    """Delete the shards no index names and the temp files of killed shard writes; returns how many went.

    The caller holds the manifest's exclusive lock (every shard is written under it), so nothing is being written
    here. Only our files go: named ``<32 hex>.vdc`` (or a shard temp file's exact mkstemp name), regular files
    (not links), empty or starting like an SQLite file (or its journal). Anything else in the folder stays; the
    folder itself goes once it is empty.
    """
    journal = bytes.fromhex("d9d505f920a163d7")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if entry.name in keep:
            continue
        temp = _SHARD_TEMP.fullmatch(entry.name)
        if not (SHARD_NAME.fullmatch(entry.name) or temp):
            continue
        if not _ours(entry.path, (journal,) if temp and temp.group(1) else (_SQLITE_MAGIC,)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
            log.debug("removed %s (no index names it)", entry.path)
    if removed:
        _fsync_dir(folder)
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a user's file in it keeps it
    return removed

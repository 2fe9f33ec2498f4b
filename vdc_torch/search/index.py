"""Stage 3: indexes over fingerprints — exact keys in hash maps, 64-bit hashes in a Hamming index.

Every backend answers the same question, ``search(queries, radius) -> (query_rows, owner_rows, distances)``,
with no all-pairs loop in Python: the Hamming index uses numpy popcount for small sets and faiss's brute-force
``IndexBinaryFlat`` (maintained, multi-threaded C++, exact within the radius) above that; large searches use exact
multi-index hashing (``mih.py``: numpy, and for the largest a numba-compiled probe loop), which
measured 3x (numpy) and ~10x (numba) faster than faiss flat at 1M x 100k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from vdc_torch.errors import InvalidParameterError, check_choice
from vdc_torch.fingerprints.hashes import popcount64
from vdc_torch.search.mih import MIH_MAX_RADIUS, MultiIndexHashing, prefer_mih

log = logging.getLogger(__name__)

HAMMING_BACKENDS = ("auto", "flat", "mih", "numpy")
#: From this many codes MIH keeps one chunk table at a time (``low_memory``): the crop index of 1M images (27M
#: codes, searched once) then needs ~0.35 GB instead of ~0.84 GB, for the same search time.
MIH_LOW_MEMORY_CODES = 8_000_000
#: Query x code pairs up to which ``auto`` searches by brute-force numpy popcount (nothing to build).
NUMPY_MAX_PAIRS = 4_000_000
#: Codes up to which a persistent index still searches by brute force (a query reads 512 KB; MIH tables above).
PERSISTENT_NUMPY_MAX_CODES = 65_536
#: Query x code distances the numpy backend computes at once (~24 MB of uint64 XORs and int32 counts).
NUMPY_BLOCK_PAIRS = 2_000_000
#: Bits of a hash code.
CODE_BITS = 64


class ExactIndex:
    """Rows grouped by an exact key (a digest, an EXIF identity); ``None`` keys are not indexed."""

    def __init__(self, keys: Sequence[Hashable | None]) -> None:
        # a key held by one row maps to the row itself, a list only for repeated keys: 1M digests need ~90 MB
        # less than with a list per key
        rows: dict[Hashable, int | list[int]] = {}
        for row, key in enumerate(keys):
            if key is None:
                continue
            found = rows.get(key)
            if found is None:
                rows[key] = row
            elif isinstance(found, list):
                found.append(row)
            else:
                rows[key] = [found, row]
        self._rows = rows

    def get(self, key: Hashable | None) -> list[int]:
        """Rows holding ``key`` (empty list when none)."""
        found = self._rows.get(key) if key is not None else None
        if found is None:
            return []
        return found if isinstance(found, list) else [found]

    def pairs(self, keys: Sequence[Hashable | None]) -> list[tuple[int, int]]:
        """``(query_row, indexed_row)`` for every query key found in the index."""
        return [(q, r) for q, key in enumerate(keys) for r in self.get(key)]


def uint64_to_bytes(codes: np.ndarray) -> np.ndarray:
    """(n,) uint64 -> (n, 8) uint8, big-endian, the layout faiss binary indexes expect."""
    return np.ascontiguousarray(codes.astype(">u8")).view(np.uint8).reshape(-1, 8)


class HammingIndex:
    """Exact range search over 64-bit hash codes; each code belongs to an ``owner`` row.

    >>> index = HammingIndex(codes, owners)  # doctest: +SKIP
    >>> q_rows, owner_rows, dist = index.search(query_codes, radius=12)  # doctest: +SKIP
    """

    def __init__(self, codes: np.ndarray, owners: np.ndarray | None = None, backend: str = "auto",
                 persistent: bool = False) -> None:
        """``owners[i]`` is the row code ``i`` belongs to (default: row ``i``). ``persistent``: the index is searched
        many times (queries against a kept reference), so ``auto`` builds the multi-index tables once, in full,
        instead of weighing their build against one brute-force search."""
        check_choice("backend", backend, HAMMING_BACKENDS)
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
        # no owners: code i is owned by row i (no arange: 216 MB for the 27M crop codes of 1M images)
        self.owners = None if owners is None else np.asarray(owners, dtype=np.int64)
        if self.owners is not None and len(self.owners) != len(self.codes):
            raise InvalidParameterError(f"owners has {len(self.owners)} entries for {len(self.codes)} codes")
        self.backend = backend
        self.persistent = persistent
        self._faiss_index = None
        self._mih: MultiIndexHashing | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def _choose(self, n_queries: int, radius: int) -> str:
        if self.backend != "auto":
            return self.backend
        if self.persistent and radius <= MIH_MAX_RADIUS and len(self.codes) > PERSISTENT_NUMPY_MAX_CODES:
            return "mih"
        if len(self.codes) * n_queries <= NUMPY_MAX_PAIRS:
            return "numpy"
        # (faiss IndexBinaryMultiHash is not offered: measured 10-60x slower than IndexBinaryFlat, speed_matching.py)
        return "mih" if prefer_mih(len(self.codes), n_queries, radius) else "flat"

    def search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ``(query_row, owner_row, distance)`` with Hamming distance ``<= radius``, sorted by query."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64).reshape(-1)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
        if len(queries) == 0 or len(self.codes) == 0:
            return empty
        backend = self._choose(len(queries), radius)
        if backend == "numpy":
            q, c, d = self._search_numpy(queries, radius)
        elif backend == "mih":
            if self._mih is None:  # built once, reused by the mirror search
                low_memory = len(self.codes) >= MIH_LOW_MEMORY_CODES and not self.persistent
                self._mih = MultiIndexHashing(self.codes, low_memory=low_memory)
            q, c, d = self._mih.search(queries, radius)
        else:
            q, c, d = self._search_faiss(queries, radius, backend)
        # ties of (query, distance) by code row: the same order whatever the backend or the other queries searched,
        # so searching a subset of the queries gives exactly the rows of the full search
        order = np.lexsort((c, d, q))
        c = c[order]
        return q[order], (c if self.owners is None else self.owners[c]), d[order]

    def _search_numpy(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qs, cs, ds = [], [], []
        step = max(1, NUMPY_BLOCK_PAIRS // max(1, len(self.codes)))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            dist = popcount64(block[:, None] ^ self.codes[None, :]).astype(np.int32)
            q, c = np.nonzero(dist <= radius)
            qs.append(q + start)
            cs.append(c)
            ds.append(dist[q, c])
        return np.concatenate(qs).astype(np.int64), np.concatenate(cs).astype(np.int64), np.concatenate(ds)

    def _search_faiss(self, queries: np.ndarray, radius: int, backend: str) -> tuple[np.ndarray, ...]:
        import faiss

        if self._faiss_index is None:
            index = faiss.IndexBinaryFlat(CODE_BITS)
            index.add(uint64_to_bytes(self.codes))
            self._faiss_index = (backend, index)
        index = self._faiss_index[1]
        lims, dist, ids = index.range_search(uint64_to_bytes(queries), radius + 1)  # faiss: strictly below
        q = np.repeat(np.arange(len(queries)), np.diff(lims.astype(np.int64)))
        return q.astype(np.int64), ids.astype(np.int64), dist.astype(np.int32)


#: Queries compared with one inverted list at a time (bounds the similarity block to ``QUERY_BLOCK x list size``).
QUERY_BLOCK = 2048
#: Vectors assigned to their lists per step of :meth:`InvertedFileIP.build` (each step reads them from ``read``).
BUILD_BLOCK = QUERY_BLOCK * 8


class InvertedFileIP:
    """Approximate nearest neighbours by inner product over unit vectors: an inverted file searched list by list.

    Each vector belongs to the list of its nearest centroid; a query is compared with the vectors of its
    ``nprobe`` nearest lists, the same candidates as faiss ``IndexIVFFlat``. The search goes list-major: all
    queries that probe a list are compared with it in one matrix product (BLAS), where faiss reads every probed
    list again for each query; at 1M x 64-d reference vectors, 976 lists and 95k queries probing 16 each, that is
    ~400 GB of list reads against one pass, 11 s against 24 s. Vectors are kept sorted by list (4 B per dimension).
    """

    def __init__(self, centroids: np.ndarray, nprobe: int) -> None:
        import faiss

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        nlist = len(centroids)
        self.quantizer = faiss.IndexFlatIP(centroids.shape[1])  # nearest centroids by inner product, as IVF does
        self.quantizer.add(centroids)
        self.nlist = int(nlist)
        self.nprobe = int(min(nprobe, nlist))
        self.vectors = np.zeros((0, 0), np.float32)
        self.rows = np.zeros(0, np.int64)  # original row of each sorted vector
        self.bounds = np.zeros(self.nlist + 1, np.int64)  # list l holds sorted vectors bounds[l]:bounds[l+1]

    def _lists(self, vectors: np.ndarray, nprobe: int) -> np.ndarray:
        _, lists = self.quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), nprobe)
        return lists

    def build(self, n: int, dim: int, read: Callable[[int, int], np.ndarray]) -> None:
        """Assign ``n`` vectors to their lists and store them sorted by list.

        ``read(start, stop)`` returns rows ``start:stop`` (float32, ``dim`` wide); it is called twice per chunk (to
        assign, then to place), so a column read from a manifest is never held twice in memory.
        """
        lists = np.empty(n, np.int64)
        for start in range(0, n, BUILD_BLOCK):
            lists[start : start + BUILD_BLOCK] = self._lists(read(start, min(n, start + BUILD_BLOCK)), 1)[:, 0]
        order = np.argsort(lists, kind="stable")
        place = np.empty(n, np.int64)
        place[order] = np.arange(n)
        self.vectors = np.empty((n, dim), np.float32)
        for start in range(0, n, BUILD_BLOCK):
            stop = min(n, start + BUILD_BLOCK)
            self.vectors[place[start:stop]] = read(start, stop)
        self.rows = order
        self.bounds = np.searchsorted(lists[order], np.arange(self.nlist + 1))

    def search_above(self, queries: np.ndarray, k: int, min_similarity: float) -> tuple[np.ndarray, ...]:
        """The ``k`` most similar vectors of each query among its probed lists, of those ``>= min_similarity``.

        Returns flat arrays ``(query_row, vector_row, similarity)``, best first within each query (ties: lower row).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        probes = self._lists(queries, self.nprobe).reshape(-1)
        owner = np.repeat(np.arange(len(queries)), self.nprobe)
        keep = probes >= 0
        probes, owner = probes[keep], owner[keep]
        by_list = np.argsort(probes, kind="stable")
        probes, owner = probes[by_list], owner[by_list]
        starts = np.searchsorted(probes, np.arange(self.nlist + 1))
        found_q, found_r, found_s = [], [], []
        for lst in np.flatnonzero(np.diff(starts)).tolist():
            lo, hi = int(self.bounds[lst]), int(self.bounds[lst + 1])
            if hi == lo:
                continue
            members = self.vectors[lo:hi]
            for q0 in range(starts[lst], starts[lst + 1], QUERY_BLOCK):
                who = owner[q0 : min(starts[lst + 1], q0 + QUERY_BLOCK)]
                sims = queries[who] @ members.T
                hit = np.flatnonzero(sims.max(axis=1) >= min_similarity)  # most queries meet nothing this close
                if not len(hit):
                    continue
                i, j = np.nonzero(sims[hit] >= min_similarity)
                i = hit[i]
                found_q.append(who[i])
                found_r.append(self.rows[lo + j])
                found_s.append(sims[i, j])
        if not found_q:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.float32)
        q, r, s = np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_s)
        order = np.lexsort((r, -s, q))
        q, r, s = q[order], r[order], s[order]
        rank = np.arange(len(q)) - np.searchsorted(q, q)  # place within its query's run
        best = rank < k
        return q[best], r[best], s[best]

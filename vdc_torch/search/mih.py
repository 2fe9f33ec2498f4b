"""Exact Hamming range search over 64-bit codes by multi-index hashing (Norouzi et al.).

The default backend of :class:`vdc_torch.index.HammingIndex` for large searches: at 1M reference x 100k queries
(radius 12) the numpy loop measured ~7 s against ~22 s for faiss ``IndexBinaryFlat`` (2 threads) and ~10 min for
faiss ``IndexBinaryMultiHash`` on this 2-core machine (``benchmarks/speed_matching.py``); the same probe loop compiled
with numba (``_mih_numba.py``, used where the numpy loop is predicted to take over a second) 1.5-2.5 s. Exact:
identical to brute force, whichever loop.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from vdc_torch.errors import InvalidParameterError


@functools.lru_cache(maxsize=64)
def flip_masks(bits: int, max_flips: int) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``max_flips`` bits set (int64), the zero mask first."""
    masks = [0]
    for k in range(1, min(max_flips, bits) + 1):
        masks.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), k))
    out = np.array(masks, dtype=np.int64)
    out.flags.writeable = False
    return out


def chunk_thresholds(widths: tuple[int, ...], radius: int) -> list[int]:
    """Per-chunk flip budgets ``t_i`` for a range search of ``radius`` (generalised pigeonhole).

    If every chunk ``i`` differed in more than ``t_i`` bits, the codes would differ in at least
    ``sum(t_i + 1)`` bits; with ``sum(t_i + 1) = radius + 1`` every pair within ``radius`` therefore has
    some chunk within its ``t_i``. Plain pigeonhole (``t_i = radius // m`` everywhere) spends
    ``m * (radius // m + 1)`` units and probes far more: for 4 x 16 bits at radius 12 it is (3,3,3,3),
    4.3 % of the reference per query, against (3,2,2,2), 1.7 %. ``t_i = -1`` means the chunk is not probed.
    Wider chunks get the larger budgets.
    """
    m = len(widths)
    budget = max(0, radius + 1)
    order = sorted(range(m), key=lambda i: -widths[i])
    t = [-1] * m
    for k, i in enumerate(order):
        t[i] = min(widths[i], budget // m + (1 if k < budget % m else 0) - 1)
    return t


#: Cost model of the numpy loop, measured on this machine (2 cores, busy): nanoseconds per probed bucket
#: by chunk width (the offsets table is 512 KiB at 16 bits and 32 MiB at 22 bits, so wide chunks miss the
#: cache), per candidate checked, and per code and chunk to build; faiss IndexBinaryFlat on 2 threads costs
#: about FLAT_PAIR_NS per (code, query) pair. See the "configurations" table of the benchmark. It also picks the
#: widths of the compiled loop: re-measured there (every choice, random codes, 2 threads), the same widths were the
#: fastest — 13 x 5 at 100k codes (6-7 us per query against 8-21 for 16 x 4), 16 x 4 at 1M and 1.35M (23-30 us
#: against 35-50 for 13 x 5 and 76-104 for 3 chunks, whose 12k probes per query miss the cache even prefetched) —
#: and at 27M codes (22, 22, 20) and (22, 21, 21) measured alike (22.2-24.9 s for 95k queries, interleaved).
MIH_PROBE_NS = ((17, 13.0), (20, 20.0), (26, 45.0))  # (max chunk bits, ns per probe)
MIH_CANDIDATE_NS = 2.5
MIH_BUILD_NS = 100.0
FLAT_PAIR_NS = 0.4
#: Codes per block of the counting sort that builds the chunk tables (bounds its temporaries to ~40 B x block).
BUILD_BLOCK = 1 << 20
#: Splits of the 64 bits considered by :func:`best_widths`: even ones, and (22, 22, 20) for the crop index of 1M
#: images (27M codes, radius 10: budgets (3, 3, 2), so the chunk probed to 2 flips is the narrow one; 28.5k
#: candidates per query against 34.6k for (22, 21, 21), 370 against 410 us per query measured).
WIDTH_CHOICES = ((22, 21, 21), (22, 22, 20), (16, 16, 16, 16), (13, 13, 13, 13, 12), (11, 11, 11, 11, 10, 10))


#: Engines of :meth:`MultiIndexHashing.search`.
MIH_ENGINES = ("auto", "numba", "numpy")
#: Searches whose numpy loop is predicted to take longer than this use the compiled loop: the first compiled search of
#: a process imports numba and loads its cached kernels, 0.9-1.6 s measured on this machine (busy), so below this
#: numpy is as fast all in (and a fresh install's first compilation, ~10 s, is only paid by a large search).
#: The model counts candidates of uniformly random codes; real pHashes cluster, and the CIFAR-10 crop index (1.35M
#: codes, 10k queries, radius 12) took 3.4-3.8 s in numpy where 0.7 s were predicted (numba: 0.6 s warm, 1.2 s
#: with its import), so the bound is a fifth of the one-second break-even.
COMPILED_MIN_NS = 2e8
#: Queries per block of the compiled loop (blocks run in parallel; a block's reads stay in 1/blocks of the table).
COMPILED_BLOCK_QUERIES = 512
#: Pairs a block of the compiled loop has room for before it is searched again alone (~1 pair per query is usual).
COMPILED_BLOCK_PAIRS = 4 * COMPILED_BLOCK_QUERIES


def mih_query_ns(widths: tuple[int, ...], n_codes: int, radius: int) -> float:
    """Predicted nanoseconds per query: probes x probe cost + expected candidates x candidate cost."""
    total = 0.0
    for bits, t in zip(widths, chunk_thresholds(widths, radius)):
        if t < 0:
            continue
        probes = sum(math.comb(bits, k) for k in range(t + 1))
        probe_ns = next(ns for max_bits, ns in MIH_PROBE_NS if bits <= max_bits)
        total += probes * probe_ns + n_codes * probes / float(1 << bits) * MIH_CANDIDATE_NS
    return total


def best_widths(n_codes: int, radius: int) -> tuple[int, ...]:
    """The chunk widths of :data:`WIDTH_CHOICES` with the lowest predicted cost per query.

    Roughly one chunk bit per doubling of the codes: 5 x 13 bits around 100k codes, 4 x 16 around 1M,
    3 x 21-22 around 10M (the crop index of 1M images).
    """
    return min(WIDTH_CHOICES, key=lambda w: mih_query_ns(w, n_codes, radius))


def prefer_mih(n_codes: int, n_queries: int, radius: int) -> bool:
    """True when the prototype is predicted to beat faiss IndexBinaryFlat (2 threads), build included."""
    if radius > MIH_MAX_RADIUS or n_codes == 0 or n_queries == 0:
        return False
    widths = best_widths(n_codes, radius)
    mih = n_queries * mih_query_ns(widths, n_codes, radius) + n_codes * len(widths) * MIH_BUILD_NS
    return mih < n_queries * n_codes * FLAT_PAIR_NS


def prefer_compiled(n_codes: int, n_queries: int, radius: int, widths: tuple[int, ...] | None = None) -> bool:
    """True when the numpy probe loop is predicted to take longer than :data:`COMPILED_MIN_NS` for this search."""
    widths = widths or best_widths(n_codes, radius)
    return n_queries * mih_query_ns(widths, n_codes, radius) > COMPILED_MIN_NS


class MultiIndexHashing:
    """Exact Hamming range search over 64-bit codes by multi-index hashing (Norouzi et al.), numpy only.

    The 64 bits are cut into chunks (``widths``; by default chosen at the first search by
    :func:`best_widths` from the number of codes and the radius). For each chunk the codes are sorted by the chunk's
    value, with an offsets table ``offsets[v] .. offsets[v+1]`` giving the rows whose chunk equals ``v``.
    A query probes, in each chunk ``i``, every value within ``t_i`` flipped bits of its own chunk value
    (:func:`chunk_thresholds`); the rows found are candidates and their full 64-bit distance is checked.
    A pair is reported by the first chunk that can find it only, so there are no duplicates.

    Work is done mask-major over sorted queries (``query_chunk ^ mask`` for many queries at once), so the
    table reads stay local, in steps of about ``step_candidates`` candidates so the temporaries stay in
    cache. Memory: per chunk, the codes in chunk order (8 B/code) and ``2**bits + 1`` offsets (4 B each below 2**31
    codes: 256 KiB for 16 bits); the first chunk also keeps the permutation (4 B/code below 2**31 codes), through
    which the rows of codes found by the other chunks are looked up by value: 36 B per code for 4 chunks, 36 MB for
    1M codes, 0.75 GB for the 27M crop codes of 1M images.
    """

    def __init__(self, codes: np.ndarray, widths: tuple[int, ...] | None = None, low_memory: bool = False) -> None:
        if widths is not None and (sum(widths) != 64 or min(widths) < 1 or max(widths) > 26):
            raise InvalidParameterError(f"widths={widths} must be 1..26-bit chunks adding up to 64 bits")
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
        #: Build each chunk's sorted codes at the start of its search pass and drop them after, instead of keeping
        #: all of them: one chunk's table in memory at a time (for an index searched once, like the crop index).
        self.low_memory = low_memory
        self.widths: tuple[int, ...] | None = None
        self.last_candidates = 0
        self.last_probes = 0
        # (shift, bits, permutation, codes in chunk order, offsets); None where not kept (see low_memory)
        self._chunks: list[tuple[int, int, np.ndarray | None, np.ndarray | None, np.ndarray | None]] = []
        if widths is not None:
            self._build(tuple(int(w) for w in widths))

    def _build(self, widths: tuple[int, ...], compiled: bool = False) -> None:
        """Sort the codes by each chunk (done once, at construction or at the first search; ``compiled``: with the
        numba counting sort, for the searches that use the compiled loop)."""
        self.widths = widths
        self._chunks = []
        shift = 0
        for i, bits in enumerate(self.widths):
            if self.low_memory and (i > 0 or compiled):  # built by search(), for its pass only
                self._chunks.append((shift, bits, None, None, None))
                shift += bits
                continue
            if compiled and i > 0 and not self.low_memory:  # codes in chunk order directly, no permutation
                self._chunks.append((shift, bits, None, *self._chunk_codes(shift, bits)))
                shift += bits
                continue
            order, offsets = self._chunk_order(shift, bits, compiled)
            if self.low_memory:  # the first chunk's permutation and offsets stay (row look-ups); not its codes
                self._chunks.append((shift, bits, order, None, offsets))
                shift += bits
                continue
            # only the first chunk keeps its permutation: the rows of the few codes found through another chunk
            # are looked up by value in the first one (_rows_of_values), which saves 4 B per code and chunk
            self._chunks.append((shift, bits, order if i == 0 else None, self.codes[order], offsets))
            del order
            shift += bits

    def _rows_of_values(
        self, values: np.ndarray, qrow: np.ndarray, dist: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code row holding ``values[i]``, as ``(query_row, code_row, distance)`` triples, once each.

        A value held by ``k`` rows is found ``k`` times by a probe of another chunk (all in the same step: equal
        codes share every bucket); each ``(query, value)`` is kept once, then expanded to its ``k`` rows.
        """
        if len(values) > 1:
            by = np.lexsort((values, qrow))
            first = by[np.concatenate(([True], (qrow[by[1:]] != qrow[by[:-1]]) | (values[by[1:]] != values[by[:-1]])))]
            values, qrow, dist = values[first], qrow[first], dist[first]
        shift0, bits0, order0, _, offsets0 = self._chunks[0]
        k0 = self._key(values, shift0, bits0)
        lo = offsets0[k0].astype(np.int64)
        cnt = offsets0[k0 + 1] - lo
        ends = np.cumsum(cnt)
        which = np.repeat(np.arange(len(values)), cnt)
        pos0 = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(lo - ends + cnt, cnt)
        rows = order0[pos0].astype(np.int64)
        same = self.codes[rows] == values[which]  # few hits: random reads are cheap here
        which, rows = which[same], rows[same]
        return qrow[which], rows, dist[which]

    def _chunk_order(self, shift: int, bits: int, compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The stable order of the codes by one chunk's value and its offsets table, by a blocked counting sort.

        Identical to ``np.argsort(key, kind="stable")`` but without any full-length key or int64 permutation: the
        bucket sizes are counted block by block, then each block is sorted on its own and its rows are written
        to the next free places of their buckets. For the 27M crop codes of 1M images this avoids ~650 MB of
        temporaries per chunk (int64 keys, the int64 argsort, the shifted and masked uint64 copies) and is
        faster than one global merge sort. ``compiled``: the same order by the numba counting sort of
        ``vdc_torch._mih_numba`` (one pass to count, one to place; ~20x faster at 27M codes).
        """
        n = len(self.codes)
        # int32 offsets below 2**31 codes: 16 MB instead of 32 MB per 22-bit chunk
        offsets = np.zeros((1 << bits) + 1, dtype=np.int32 if n < 2**31 else np.int64)
        if compiled:
            from vdc_torch.search._mih_numba import chunk_table

            order = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
            chunk_table(self.codes, shift, bits, offsets, order, np.zeros(0, np.uint64))
            return order, offsets
        for start in range(0, n, BUILD_BLOCK):
            offsets[1:] += np.bincount(self._key(self.codes[start : start + BUILD_BLOCK], shift, bits),
                                       minlength=1 << bits)
        np.cumsum(offsets, out=offsets)
        cursor = offsets[:-1].copy()  # next free place of each bucket
        # halves the permutation below 2**31 codes: 27M crop codes of 1M images x 3 chunks
        order = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
        for start in range(0, n, BUILD_BLOCK):
            key = self._key(self.codes[start : start + BUILD_BLOCK], shift, bits)
            perm = np.argsort(key, kind="stable")
            key = key[perm]
            first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            run = np.diff(np.append(first, len(key)))
            rank = np.arange(len(key)) - np.repeat(first, run)  # place within its bucket, in this block
            order[cursor[key] + rank] = perm + start
            cursor[key[first]] += run
        return order, offsets

    def _chunk_codes(self, shift: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """The codes in one chunk's order and its offsets table, by the numba counting sort, with no permutation.

        What the compiled loop needs of a chunk other than the first: the rows of its (rare) pairs are looked up by
        value in the first chunk. For the 27M crop codes of 1M images this saves the 108 MB permutation and the
        16 MB cursor of a low_memory pass.
        """
        from vdc_torch.search._mih_numba import chunk_table

        n = len(self.codes)
        offsets = np.zeros((1 << bits) + 1, dtype=np.int32 if n < 2**31 else np.int64)
        chunk_codes = np.empty(n, dtype=np.uint64)
        chunk_table(self.codes, shift, bits, offsets, np.zeros(0, offsets.dtype), chunk_codes)
        return chunk_codes, offsets

    @staticmethod
    def _key(codes: np.ndarray, shift: int, bits: int) -> np.ndarray:
        return ((codes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the tables kept between searches."""
        return sum(sum(0 if a is None else a.nbytes for a in (o, c, f)) for _, _, o, c, f in self._chunks)

    def search(
        self, queries: np.ndarray, radius: int, *, step_candidates: int = 1 << 18, engine: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ``(query_row, code_row, distance)`` with Hamming distance ``<= radius`` (unsorted).

        ``engine``: ``"numba"`` (the compiled probe loop of ``vdc_torch._mih_numba``), ``"numpy"``, or ``"auto"``:
        numba where the numpy loop is predicted to take longer than :data:`COMPILED_MIN_NS` (so small searches never
        import numba), numpy otherwise. Both return the same pairs.
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint64).reshape(-1)
        out_q: list[np.ndarray] = []
        out_c: list[np.ndarray] = []
        out_d: list[np.ndarray] = []
        self.last_candidates = self.last_probes = 0
        if engine not in MIH_ENGINES:
            raise InvalidParameterError(f"engine={engine!r} must be one of {MIH_ENGINES}")
        if len(queries) == 0 or len(self.codes) == 0 or radius < 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
        widths = self.widths or best_widths(len(self.codes), radius)
        if engine == "auto":
            engine = "numba" if prefer_compiled(len(self.codes), len(queries), radius, widths) else "numpy"
        if self.widths is None:
            self._build(widths, compiled=engine == "numba")
        if engine == "numpy" and self.low_memory and self._chunks[0][2] is None:  # built for the compiled loop
            bits0 = self._chunks[0][1]
            order0, offsets0 = self._chunk_order(0, bits0)  # the numpy loop finds rows through the first chunk
            self._chunks[0] = (0, bits0, order0, None, offsets0)
        thresholds = chunk_thresholds(self.widths, radius)
        qkeys = [self._key(queries, shift, bits) for shift, bits, *_ in self._chunks]
        # the compiled loop in low_memory mode keeps no permutation at all: every pass reports code values, whose rows
        # one scan of the codes finds at the end (_expand_values); 124 MB less for the 27M crop codes of 1M images
        by_value = engine == "numba" and self.low_memory
        for i, (shift, bits, order, chunk_codes, offsets) in enumerate(self._chunks):
            if thresholds[i] < 0:
                continue
            if chunk_codes is None:  # low_memory: this chunk's table for this pass only
                if by_value:
                    order = None
                    chunk_codes, offsets = self._chunk_codes(shift, bits)
                else:
                    if order is None:
                        order, offsets = self._chunk_order(shift, bits)
                    chunk_codes = self.codes[order]
                    if i > 0:
                        order = None
            masks = flip_masks(bits, thresholds[i])
            earlier = [j for j in range(i) if thresholds[j] >= 0]
            qorder = np.argsort(qkeys[i], kind="stable")
            args = (queries, qkeys, qorder, radius, thresholds, earlier, i, masks, order, chunk_codes, offsets)
            if engine == "numba":
                found = self._probe_compiled(*args, by_value=by_value)
            else:
                found = self._probe_numpy(*args, step_candidates=step_candidates)
            for qrow, rows, dist in found:
                out_q.append(qrow)
                out_c.append(rows)
                out_d.append(dist)
            # a low_memory pass's tables (~0.3 GB for 27M codes) must be gone before the next pass builds its own
            del args, order, chunk_codes, offsets
        if not out_q:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
        if by_value:
            return self._expand_values(np.concatenate(out_q), np.concatenate(out_c), np.concatenate(out_d))
        return (
            np.concatenate(out_q).astype(np.int64),
            np.concatenate(out_c).astype(np.int64),
            np.concatenate(out_d).astype(np.int32),
        )

    def _expand_values(
        self, qrow: np.ndarray, values: np.ndarray, dist: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query_row, value, distance)`` (each pair once) -> ``(query_row, code_row, distance)`` for every code row
        holding the value, by one pass over the codes (``_mih_numba.rows_of_values``)."""
        from vdc_torch.search._mih_numba import rows_of_values

        unique = np.unique(values)
        index = np.empty(len(unique), np.int64)
        rows = np.empty(len(unique), np.int64)
        n = rows_of_values(self.codes, unique, index, rows)
        if n > len(rows):  # values held by several rows: again with room for all
            index, rows = np.empty(n, np.int64), np.empty(n, np.int64)
            rows_of_values(self.codes, unique, index, rows)
        index, rows = index[:n], rows[:n]
        by = np.argsort(index, kind="stable")
        rows = rows[by]
        count = np.bincount(index, minlength=len(unique))
        first = np.cumsum(count) - count
        which = np.searchsorted(unique, values)
        cnt = count[which]
        ends = np.cumsum(cnt)
        pos = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(first[which] - ends + cnt, cnt)
        return np.repeat(qrow, cnt).astype(np.int64), rows[pos], np.repeat(dist, cnt).astype(np.int32)

    def _probe_numpy(
        self, queries: np.ndarray, qkeys: list[np.ndarray], qorder: np.ndarray, radius: int, thresholds: list[int],
        earlier: list[int], i: int, masks: np.ndarray, order: np.ndarray | None, chunk_codes: np.ndarray,
        offsets: np.ndarray, *, step_candidates: int,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Chunk ``i``'s probes in numpy, in steps of about ``step_candidates`` candidates."""
        found = []
        bits = self._chunks[i][1]
        qk, qc = qkeys[i][qorder], queries[qorder]
        per_bucket = max(len(self.codes) / float(1 << bits), 1.0 / 16)
        probes_per_step = max(1024, int(step_candidates / per_bucket))
        nq = min(len(qk), probes_per_step)
        nm = max(1, probes_per_step // nq)
        for m0 in range(0, len(masks), nm):
            mblock = masks[m0 : m0 + nm]
            for q0 in range(0, len(qk), nq):
                qkb, qcb = qk[q0 : q0 + nq], qc[q0 : q0 + nq]
                probe = (qkb[None, :] ^ mblock[:, None]).ravel()  # mask-major: reads stay local
                lo = offsets[probe]
                cnt = offsets[probe + 1] - lo
                ends = np.cumsum(cnt)
                total = int(ends[-1])
                self.last_probes += len(probe)
                self.last_candidates += total
                if total == 0:
                    continue
                pos = np.arange(total, dtype=np.int64) + np.repeat((lo - ends + cnt).astype(np.int64), cnt)
                dist = np.bitwise_count(chunk_codes[pos] ^ np.repeat(np.tile(qcb, len(mblock)), cnt))
                hit = np.flatnonzero(dist <= radius)
                if len(hit) == 0:
                    continue
                probe_row = np.searchsorted(ends, hit, side="right")
                qrow = qorder[q0 + probe_row % len(qkb)]
                pos, dist = pos[hit], dist[hit]
                if earlier:  # reported by an earlier chunk already?
                    found_codes = chunk_codes[pos]
                    keep = np.ones(len(hit), dtype=bool)
                    for j in earlier:
                        shift_j, bits_j = self._chunks[j][0], self._chunks[j][1]
                        d_j = np.bitwise_count(self._key(found_codes, shift_j, bits_j) ^ qkeys[j][qrow])
                        keep &= d_j > thresholds[j]
                    qrow, pos, dist = qrow[keep], pos[keep], dist[keep]
                if order is None:
                    found.append(self._rows_of_values(chunk_codes[pos], qrow, dist))
                else:
                    found.append((qrow, order[pos], dist))
        return found

    def _probe_compiled(
        self, queries: np.ndarray, qkeys: list[np.ndarray], qorder: np.ndarray, radius: int, thresholds: list[int],
        earlier: list[int], i: int, masks: np.ndarray, order: np.ndarray | None, chunk_codes: np.ndarray,
        offsets: np.ndarray, *, by_value: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Chunk ``i``'s probes in the compiled loop (``_mih_numba.probe_chunk``), blocks of queries in parallel.

        ``by_value``: report the code values found instead of their rows (``_mih_numba.ROWS_VALUE``). Each block writes to its own slice of the output (:data:`COMPILED_BLOCK_PAIRS` pairs); the rare block
        that finds more (many equal codes) is searched again alone with room for all its pairs.
        """
        from vdc_torch.search._mih_numba import ROWS_LOOKUP, ROWS_PERM, ROWS_VALUE, probe_chunk

        shift, bits = self._chunks[i][0], self._chunks[i][1]
        _, first_bits, first_perm, _, first_offsets = self._chunks[0]
        if by_value:
            row_mode, first_perm, first_offsets = ROWS_VALUE, np.zeros(0, np.int32), np.zeros(1, np.int32)
        else:
            row_mode = ROWS_LOOKUP if order is None else ROWS_PERM
        qc = queries[qorder]
        starts = np.arange(0, len(qc), COMPILED_BLOCK_QUERIES, dtype=np.int64)
        ends = np.minimum(starts + COMPILED_BLOCK_QUERIES, len(qc))
        earlier_shift = np.array([self._chunks[j][0] for j in earlier], dtype=np.int64)
        earlier_mask = np.array([(1 << self._chunks[j][1]) - 1 for j in earlier], dtype=np.uint64)
        earlier_flips = np.array([thresholds[j] for j in earlier], dtype=np.int64)
        perm = order if order is not None else np.zeros(0, dtype=first_perm.dtype)
        found = []
        capacity = np.full(len(starts), COMPILED_BLOCK_PAIRS, dtype=np.int64)
        while len(starts):
            out_end = np.cumsum(capacity)
            out_start = out_end - capacity
            total = int(out_end[-1])
            out_q = np.empty(total, np.int64)
            out_r = np.empty(total, np.uint64)  # rows, or code values (by_value)
            out_d = np.empty(total, np.int32)
            counts = np.zeros(len(starts), np.int64)
            candidates = np.zeros(len(starts), np.int64)
            probe_chunk(qc, qorder, starts, ends, out_start, out_end, shift, bits, masks, chunk_codes, offsets, perm,
                        row_mode, first_offsets, first_perm, first_bits, self.codes, earlier_shift, earlier_mask,
                        earlier_flips, radius, out_q, out_r, out_d, counts, candidates)
            fits = counts <= capacity
            got = np.minimum(counts, capacity)
            keep = np.arange(total) - np.repeat(out_start, capacity) < np.repeat(np.where(fits, got, 0), capacity)
            found.append((out_q[keep], out_r[keep], out_d[keep]))
            self.last_probes += int(np.sum((ends - starts)[fits])) * len(masks)
            self.last_candidates += int(np.sum(candidates[fits]))
            # blocks that did not fit: again, alone, with room for every pair they found
            starts, ends, capacity = starts[~fits], ends[~fits], counts[~fits]
        return found


#: Above this radius the flip enumeration explodes (4 x 16 bits: radius 20 -> t = (5,5,5,4), 2 * 8k masks);
#: flat is then cheaper.
MIH_MAX_RADIUS = 20

"""The probe loop of :class:`vdc_torch.mih.MultiIndexHashing` compiled with numba (imported only for large searches).

One call searches one chunk table for every query: blocks of queries (sorted by the chunk's value) run in parallel,
each block mask-major (``query_chunk ^ mask`` for every query of the block, then the next mask), so the table reads
of a block stay in a small region of the table; for each mask the block's bucket bounds are read first, then the
buckets are scanned with the next ones prefetched. Every candidate's full 64-bit distance is checked in the same loop;
pairs an earlier chunk finds already are skipped, so each pair is reported once. Exact: identical to brute force.

Compiled with ``cache=True``: the machine code is written beside this file (``__pycache__``), or, where the package
is installed read-only, in numba's user-wide cache directory (``~/.cache/numba``; ``NUMBA_CACHE_DIR`` overrides
both), so only the first search of a fresh install pays the compilation (~10 s on 2 cores). Without any
writable cache directory the kernel is compiled in memory at each first use.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM ``ctpop``: one ``popcnt`` instruction on x86-64)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to fetch ``array[index]`` into the caches (``prefetcht0``); no effect on results."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        arytype = signature.args[0]
        ary = context.make_array(arytype)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arytype, ary, [args[1]], wraparound=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        # unsuffixed name: LLVM's auto-upgrade gives it the pointer suffix of its version (p0i8 before opaque
        # pointers, p0 after), so the same IR compiles with every llvmlite numba supports
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch"
        )
        # read, keep in every cache level, data cache; a prefetch never faults, even past the end of the array
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


#: What :func:`probe_chunk` reports for each pair: the row (by the chunk's permutation), every row holding the code
#: (looked up in the first chunk), or the code itself.
ROWS_PERM, ROWS_LOOKUP, ROWS_VALUE = 0, 1, 2
#: Low bits of a code in the bit filter of :func:`rows_of_values` (2 MB; ~0.6 % false positives for 100k values).
VALUE_FILTER_BITS = 24
#: Buckets the scan of a block prefetches ahead (their first two cache lines, ~16 codes). The buckets of the crop
#: index of 1M images (27M codes, 216 MB) are mostly DRAM reads: without prefetching the loop waited on them, 5x
#: slower (326 against 63 us per query, 2 threads, busy machine); 8 and 16 ahead measured alike, 8 slightly better.
PREFETCH_AHEAD = 8


def _jit(**options):
    """``njit(cache=True, ...)``, or without the cache where numba finds no writable cache directory."""

    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(fn)

    return wrap


@_jit(parallel=True, nogil=True)
def probe_chunk(
    queries: np.ndarray, query_rows: np.ndarray, block_start: np.ndarray, block_end: np.ndarray,
    out_start: np.ndarray, out_end: np.ndarray, shift: int, bits: int, masks: np.ndarray, chunk_codes: np.ndarray,
    offsets: np.ndarray, perm: np.ndarray, row_mode: int, first_offsets: np.ndarray, first_perm: np.ndarray,
    first_bits: int, codes: np.ndarray, earlier_shift: np.ndarray, earlier_mask: np.ndarray,
    earlier_flips: np.ndarray, radius: int, out_q: np.ndarray, out_r: np.ndarray, out_d: np.ndarray,
    counts: np.ndarray, candidates: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Search one chunk table for the queries of every block ``b`` (``queries[block_start[b]:block_end[b]]``).

    ``queries`` are sorted by this chunk's value; ``query_rows`` their rows in the caller's query array. What
    ``out_r`` receives (``row_mode``): :data:`ROWS_PERM`, the row ``perm[position]``; :data:`ROWS_LOOKUP`, every row
    holding the code, looked up by value in the first chunk (``first_offsets`` / ``first_perm`` over ``codes``; the
    first chunk is the low ``first_bits`` bits); :data:`ROWS_VALUE`, the code itself (rows found later by
    :func:`rows_of_values`). In the last two modes a value held by several rows of a bucket is reported once.
    Block ``b`` writes its pairs to ``out_*[out_start[b]:out_end[b]]`` and its number of pairs (also those that did
    not fit) to ``counts[b]``, its candidates checked to ``candidates[b]``.
    """
    kmask = np.uint64((1 << bits) - 1)
    fmask = np.uint64((1 << first_bits) - 1)
    ush = np.uint64(shift)
    urad = np.uint64(radius)
    n_earlier = len(earlier_flips)
    for b in prange(len(block_start)):
        start, end = block_start[b], block_end[b]
        base, cap = out_start[b], out_end[b] - out_start[b]
        n = 0
        cand = 0
        n_block = end - start
        lo_of = np.empty(n_block, np.int64)
        hi_of = np.empty(n_block, np.int64)
        for mi in range(len(masks)):
            m = np.uint64(masks[mi])
            for k in range(n_block):  # the block's buckets for this mask first: independent reads, overlapped
                v = ((queries[start + k] >> ush) & kmask) ^ m
                lo_of[k] = offsets[v]
                hi_of[k] = offsets[v + 1]
            for k in range(n_block):
                if k + PREFETCH_AHEAD < n_block:
                    _prefetch(chunk_codes, lo_of[k + PREFETCH_AHEAD])
                    _prefetch(chunk_codes, lo_of[k + PREFETCH_AHEAD] + 8)
                j = start + k
                qc = queries[j]
                lo = lo_of[k]
                hi = hi_of[k]
                cand += hi - lo
                near = 0  # a branch-free pass first (vectorised: vpopcntq where the CPU has it); hits are rare
                for p in range(lo, hi):
                    near += _popcount(chunk_codes[p] ^ qc) <= urad
                if near == 0:
                    continue
                for p in range(lo, hi):
                    x = chunk_codes[p] ^ qc
                    d = _popcount(x)
                    if d > urad:
                        continue
                    seen = False  # found through an earlier chunk already?
                    for e in range(n_earlier):
                        if _popcount((x >> np.uint64(earlier_shift[e])) & np.uint64(earlier_mask[e])) <= np.uint64(
                            earlier_flips[e]
                        ):
                            seen = True
                            break
                    if seen:
                        continue
                    if row_mode == ROWS_PERM:
                        if n < cap:
                            out_q[base + n] = query_rows[j]
                            out_r[base + n] = perm[p]
                            out_d[base + n] = d
                        n += 1
                        continue
                    c = chunk_codes[p]
                    for pp in range(lo, p):  # equal codes share the bucket: expand each value once
                        if chunk_codes[pp] == c:
                            seen = True
                            break
                    if seen:
                        continue
                    if row_mode == ROWS_VALUE:
                        if n < cap:
                            out_q[base + n] = query_rows[j]
                            out_r[base + n] = c
                            out_d[base + n] = d
                        n += 1
                        continue
                    k0 = c & fmask
                    for p0 in range(first_offsets[k0], first_offsets[k0 + 1]):
                        row = first_perm[p0]
                        if codes[row] == c:
                            if n < cap:
                                out_q[base + n] = query_rows[j]
                                out_r[base + n] = row
                                out_d[base + n] = d
                            n += 1
        counts[b] = n
        candidates[b] = cand


@_jit(nogil=True)
def chunk_table(
    codes: np.ndarray, shift: int, bits: int, offsets: np.ndarray, order: np.ndarray, chunk_codes: np.ndarray
) -> None:
    """The codes sorted (stably) by the chunk ``(code >> shift) & (2**bits - 1)``, by a counting sort.

    ``offsets`` (``2**bits + 1`` zeros on entry) receives the cumulated bucket sizes; ``order`` (``len(codes)``, or
    empty: not wanted) the permutation, identical to ``np.argsort(key, kind="stable")``; ``chunk_codes`` (the same,
    or empty) ``codes[order]``, written directly so the permutation need not exist (the low_memory passes).
    """  # pragma: no cover - compiled
    kmask = np.uint64((1 << bits) - 1)
    ush = np.uint64(shift)
    for i in range(len(codes)):
        offsets[((codes[i] >> ush) & kmask) + np.uint64(1)] += 1
    for v in range(1, len(offsets)):
        offsets[v] += offsets[v - 1]
    # offsets[v] is the next free place of bucket v while placing (no separate cursor: 16 MB at 22 bits), and ends
    # as the start of bucket v + 1: shifted back after
    want_order, want_codes = len(order) > 0, len(chunk_codes) > 0
    for i in range(len(codes)):
        k = (codes[i] >> ush) & kmask
        place = offsets[k]
        if want_order:
            order[place] = i
        if want_codes:
            chunk_codes[place] = codes[i]
        offsets[k] = place + 1
    for v in range(len(offsets) - 1, 0, -1):
        offsets[v] = offsets[v - 1]
    offsets[0] = 0


@_jit(nogil=True)
def rows_of_values(codes: np.ndarray, values: np.ndarray, out_index: np.ndarray, out_row: np.ndarray) -> int:
    """Every row ``r`` with ``codes[r]`` in ``values`` (sorted, distinct), as ``(index in values, r)``, rows ascending.

    One pass over the codes; a bit filter of the values' low bits skips the binary search for almost every row.
    Writes up to ``len(out_row)`` pairs and returns how many there are (call again with room for all when more).
    """  # pragma: no cover - compiled
    fmask = np.uint64((1 << VALUE_FILTER_BITS) - 1)
    seen = np.zeros(1 << (VALUE_FILTER_BITS - 3), np.uint8)
    for i in range(len(values)):
        k = values[i] & fmask
        seen[k >> np.uint64(3)] |= np.uint8(1 << (k & np.uint64(7)))
    n = 0
    for row in range(len(codes)):
        c = codes[row]
        k = c & fmask
        if seen[k >> np.uint64(3)] & np.uint8(1 << (k & np.uint64(7))) == 0:
            continue
        i = np.searchsorted(values, c)
        if i < len(values) and values[i] == c:
            if n < len(out_row):
                out_index[n] = i
                out_row[n] = row
            n += 1
    return n

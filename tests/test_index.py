"""Indexes: every Hamming backend returns exactly the brute-force pairs within the radius."""

from __future__ import annotations

import numpy as np
import pytest

from vdc_torch.index import ExactIndex, HammingIndex


def brute_force(queries: np.ndarray, codes: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    dist = np.bitwise_count(queries[:, None] ^ codes[None, :])
    q, c = np.nonzero(dist <= radius)
    return {(int(a), int(b), int(dist[a, b])) for a, b in zip(q, c)}


@pytest.mark.parametrize("backend", ["numpy", "flat", "mih", "multihash"])
@pytest.mark.parametrize("radius", [0, 3, 8, 12])
def test_hamming_backends_agree_with_brute_force(backend: str, radius: int) -> None:
    rng = np.random.default_rng(radius)
    codes = rng.integers(0, 2**63, size=3000, dtype=np.uint64) * 2 + 1
    queries = codes[:400].copy()
    # flip a random number (0..radius+2) of bits in each query so distances straddle the radius
    for i in range(len(queries)):
        for bit in rng.choice(64, size=rng.integers(0, radius + 3), replace=False):
            queries[i] ^= np.uint64(1) << np.uint64(bit)
    index = HammingIndex(codes, backend=backend)
    q, owners, dist = index.search(queries, radius)
    assert set(zip(q.tolist(), owners.tolist(), dist.tolist())) == brute_force(queries, codes, radius)


def test_owners_map_several_codes_to_one_row() -> None:
    codes = np.array([0, 2**64 - 1, 0b1111, 12345], dtype=np.uint64)
    index = HammingIndex(codes, owners=np.array([7, 7, 8, 9]))
    q, owners, dist = index.search(np.array([0b0111], dtype=np.uint64), 3)
    assert (owners.tolist(), dist.tolist()) == ([8, 7], [1, 3])  # sorted by distance; code 0 belongs to row 7


def test_exact_index_pairs_and_ignores_missing_keys() -> None:
    index = ExactIndex([b"a", None, b"b", b"a"])
    assert index.get(b"a") == [0, 3]
    assert index.get(None) == []
    assert index.pairs([b"b", None, b"a"]) == [(0, 2), (2, 0), (2, 3)]


def test_every_backend_returns_the_same_rows_in_the_same_order_for_any_query_subset() -> None:
    """Ties of (query, distance) come by code row, so a search of some queries is a slice of the full search."""
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 2**63, size=4000, dtype=np.uint64) * 2 + 1
    codes[1000:1100] = codes[:100]  # repeated codes: ties at every distance
    queries = codes[:300] ^ np.uint64(0b1011)
    results = []
    for backend in ("numpy", "flat", "mih"):
        q, owners, dist = HammingIndex(codes, backend=backend).search(queries, 10)
        results.append((q.tolist(), owners.tolist(), dist.tolist()))
        subset = np.arange(0, len(queries), 3)
        sq, so, sd = HammingIndex(codes, backend=backend).search(queries[subset], 10)
        keep = np.isin(q, subset)
        assert (subset[sq].tolist(), so.tolist(), sd.tolist()) == (q[keep].tolist(), owners[keep].tolist(),
                                                                   dist[keep].tolist())
    assert results[0] == results[1] == results[2]


def test_mih_blocked_build_equals_a_global_stable_argsort(monkeypatch: pytest.MonkeyPatch) -> None:
    from vdc_torch import mih

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64 - 1, size=5000, dtype=np.uint64, endpoint=True)
    codes[::7] = codes[0]  # many equal keys in every chunk, spread over every block
    monkeypatch.setattr(mih, "BUILD_BLOCK", 333)
    index = mih.MultiIndexHashing(codes, widths=(10, 10, 11, 11, 11, 11))
    for i, (shift, bits, order, chunk_codes, offsets) in enumerate(index._chunks):
        key = ((codes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        expected = np.argsort(key, kind="stable")
        assert order is None if i else order.tolist() == expected.tolist()
        assert (index._chunk_order(shift, bits)[0] == expected).all()
        assert offsets.tolist() == [0] + np.cumsum(np.bincount(key, minlength=1 << bits)).tolist()
        assert (chunk_codes == codes[expected]).all()


@pytest.mark.parametrize("low_memory", [False, True])
@pytest.mark.parametrize("widths", [(22, 22, 20), (11, 11, 11, 11, 10, 10)])
def test_mih_finds_every_row_of_repeated_codes_once(widths: tuple[int, ...], low_memory: bool) -> None:
    """Only the first chunk keeps its permutation; rows found through the others are looked up by value."""
    from vdc_torch.mih import MultiIndexHashing

    rng = np.random.default_rng(11)
    codes = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
    codes[::5] = codes[3]  # one code held by 600 rows
    codes[1::9] = codes[10]
    queries = codes[:200] ^ np.uint64(0b1001011)
    queries[::3] = rng.integers(0, 2**64 - 1, size=len(queries[::3]), dtype=np.uint64, endpoint=True)
    index = MultiIndexHashing(codes, widths, low_memory=low_memory)
    for radius in (3, 8, 12):  # the same index searched again (low_memory rebuilds its chunk tables)
        q, c, d = index.search(queries, radius)
        got = list(zip(q.tolist(), c.tolist(), d.tolist()))
        assert len(got) == len(set(got))
        assert set(got) == brute_force(queries, codes, radius)


def test_crop_radius_shrinks_with_the_index_so_chance_candidates_stay_rare() -> None:
    from vdc_torch.matching import chance_limited_radius

    assert chance_limited_radius(12, 27 * 50_000) == 12  # CIFAR-10 train: the configured radius
    assert chance_limited_radius(12, 27 * 1_000_000) == 10  # 1M images
    assert chance_limited_radius(8, 27 * 1_000_000) == 8  # never above the configured radius
    # the measured rate agrees with the model: random codes against random queries at the chosen radius
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**64 - 1, size=2_000_000, dtype=np.uint64, endpoint=True)
    queries = rng.integers(0, 2**64 - 1, size=2_000, dtype=np.uint64, endpoint=True)
    radius = chance_limited_radius(14, len(codes))
    q, _, _ = HammingIndex(codes).search(queries, radius)
    assert len(q) / len(queries) <= 2.0

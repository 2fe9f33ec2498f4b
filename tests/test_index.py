"""Indexes: every Hamming backend returns exactly the brute-force pairs within the radius."""

from __future__ import annotations

import numpy as np
import pytest

from vdc_torch.search.index import ExactIndex, HammingIndex


def brute_force(queries: np.ndarray, codes: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    dist = np.bitwise_count(queries[:, None] ^ codes[None, :])
    q, c = np.nonzero(dist <= radius)
    return {(int(a), int(b), int(dist[a, b])) for a, b in zip(q, c)}


@pytest.mark.parametrize("backend", ["numpy", "flat", "mih"])
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
    from vdc_torch.search import mih

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
        compiled_order, compiled_offsets = index._chunk_order(shift, bits, compiled=True)  # numba counting sort
        assert (compiled_order == expected).all() and (compiled_offsets == offsets).all()
        compiled_codes, compiled_offsets = index._chunk_codes(shift, bits)  # no permutation: codes placed directly
        assert (compiled_codes == codes[expected]).all() and (compiled_offsets == offsets).all()
        assert offsets.tolist() == [0] + np.cumsum(np.bincount(key, minlength=1 << bits)).tolist()
        assert (chunk_codes == codes[expected]).all()


@pytest.mark.parametrize("low_memory", [False, True])
@pytest.mark.parametrize("widths", [(22, 22, 20), (11, 11, 11, 11, 10, 10)])
def test_mih_finds_every_row_of_repeated_codes_once(widths: tuple[int, ...], low_memory: bool) -> None:
    """Only the first chunk keeps its permutation; rows found through the others are looked up by value."""
    from vdc_torch.search.mih import MultiIndexHashing

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
    from vdc_torch.search.cascade import chance_limited_radius

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


def _seeded_codes(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``uniform`` codes, ``duplicates`` (a few codes held by hundreds of rows) or ``clustered`` ones (most bits fixed,
    so a few chunk values hold most codes, as with real hashes of similar pictures)."""
    codes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    if kind == "duplicates":
        codes[::5] = codes[3]
        codes[1::9] = codes[10]
    elif kind == "clustered":
        free = np.uint64(0x0F0F_0000_00FF_0F03)  # 20 free bits spread over every chunk, the rest shared
        codes = (codes & free) | (np.uint64(0xA5A5_5A5A_C3C3_3C3C) & ~free)
    return codes


def _queries_near(codes: np.ndarray, rng: np.random.Generator, n: int, max_flips: int) -> np.ndarray:
    """Copies of codes with 0..max_flips random bits flipped (so some are exact: radius 0 finds them), and random."""
    queries = codes[rng.integers(0, len(codes), size=n)].copy()
    for i in range(n):
        for bit in rng.choice(64, size=rng.integers(0, max_flips + 1), replace=False):
            queries[i] ^= np.uint64(1) << np.uint64(bit)
    queries[::7] = rng.integers(0, 2**64 - 1, size=len(queries[::7]), dtype=np.uint64, endpoint=True)
    return queries


@pytest.mark.parametrize("kind", ["uniform", "duplicates", "clustered"])
@pytest.mark.parametrize("low_memory", [False, True])
@pytest.mark.parametrize("widths", [(16, 16, 16, 16), (22, 22, 20), (13, 13, 13, 13, 12), (10, 10, 11, 11, 11, 11)])
def test_mih_compiled_loop_equals_brute_force_and_numpy(
    widths: tuple[int, ...], low_memory: bool, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numba probe loop: every pair within the radius once, the same pairs as the numpy loop.

    Small blocks with room for few pairs, so blocks run in parallel and the blocks that overflow are searched again.
    """
    from vdc_torch.search import mih

    monkeypatch.setattr(mih, "COMPILED_BLOCK_QUERIES", 32)
    monkeypatch.setattr(mih, "COMPILED_BLOCK_PAIRS", 4)
    rng = np.random.default_rng(sum(widths) + len(widths) + 7 * low_memory + len(kind))
    codes = _seeded_codes(kind, rng, 2500)
    queries = _queries_near(codes, rng, 300, 14)
    index = mih.MultiIndexHashing(codes, widths, low_memory=low_memory)
    for radius in (0, 4, 10, 12):  # the same index searched again (low_memory rebuilds its chunk tables)
        q, c, d = index.search(queries, radius, engine="numba")
        got = list(zip(q.tolist(), c.tolist(), d.tolist()))
        assert len(got) == len(set(got))
        assert set(got) == brute_force(queries, codes, radius)
        assert sorted(got) == sorted(zip(*(a.tolist() for a in index.search(queries, radius, engine="numpy"))))


def real_phashes() -> np.ndarray:
    """pHashes of many overlapping windows of real photos: clustered codes, with near and exact repeats."""
    import cv2
    from conftest import COWS, EXIF_JPG

    from vdc_torch.fingerprints.compute import phash_batch

    files = sorted(COWS.glob("*.png")) + sorted(EXIF_JPG.glob("*.jpg"))[:20]
    windows = []
    for f in files:
        gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        h, w = gray.shape
        for top in np.linspace(0, h // 4, 6).astype(int):
            for left in np.linspace(0, w // 4, 6).astype(int):
                window = gray[top : top + 3 * h // 4, left : left + 3 * w // 4]
                windows.append(cv2.resize(window, (32, 32), interpolation=cv2.INTER_AREA))
    return phash_batch(np.stack(windows))


def test_mih_compiled_loop_on_real_phashes(monkeypatch: pytest.MonkeyPatch) -> None:
    from vdc_torch.search import mih

    monkeypatch.setattr(mih, "COMPILED_BLOCK_QUERIES", 64)
    codes = real_phashes()
    codes = np.concatenate([codes, codes[::10]])  # and exact repeats, as a dataset's duplicate files give
    near = np.bitwise_count(codes[:, None] ^ codes[None, :]) <= 12
    assert len(codes) >= 500 and near.sum() - len(codes) > len(codes) // 2  # windows of one photo cluster
    queries = codes[::3].copy()
    queries[1::2] ^= np.uint64(0b1000_0001_0000_0000_0000_0001)  # 3 bits off
    for widths, low_memory in (((16, 16, 16, 16), False), ((22, 22, 20), True)):
        index = mih.MultiIndexHashing(codes, widths, low_memory=low_memory)
        for radius in (0, 6, 12):
            q, c, d = index.search(queries, radius, engine="numba")
            got = list(zip(q.tolist(), c.tolist(), d.tolist()))
            assert len(got) == len(set(got))
            assert set(got) == brute_force(queries, codes, radius)


@pytest.mark.parametrize("low_memory", [True, False])
def test_large_searches_use_the_compiled_loop_and_build(low_memory: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """HammingIndex as the searches at 1M images use it (numba loop and counting sort; low_memory tables for the
    crop index), scaled down."""
    from vdc_torch.search import index as index_module
    from vdc_torch.search import mih

    monkeypatch.setattr(index_module, "MIH_LOW_MEMORY_CODES", 1000 if low_memory else 10**9)
    monkeypatch.setattr(mih, "COMPILED_MIN_NS", 0.0)
    rng = np.random.default_rng(5)
    codes = _seeded_codes("duplicates", rng, 6000)
    queries = _queries_near(codes, rng, 500, 12)
    index = HammingIndex(codes, owners=np.arange(len(codes)) // 3, backend="mih")
    q, owners, dist = index.search(queries, 10)
    assert index._mih is not None and index._mih.low_memory == low_memory
    expected = {(a, b // 3, d) for a, b, d in brute_force(queries, codes, 10)}
    assert len(q) == len(brute_force(queries, codes, 10))
    assert set(zip(q.tolist(), owners.tolist(), dist.tolist())) == expected
    # the same index searched again by the numpy loop (a small search), at another radius
    raw = index._mih.search(queries[:50], 7, engine="numpy")
    assert set(zip(*(a.tolist() for a in raw))) == brute_force(queries[:50], codes, 7)


def test_small_searches_do_not_import_numba() -> None:
    """The compiled loop is for large searches only: a small one stays in numpy (no numba import or JIT)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from vdc_torch.search.index import HammingIndex\n"
        "codes = np.random.default_rng(0).integers(0, 2**63, size=20_000, dtype=np.uint64)\n"
        "HammingIndex(codes, backend='mih').search(codes[:2000], 12)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_loop_is_chosen_for_large_searches_only() -> None:
    from vdc_torch.search.mih import prefer_compiled

    assert prefer_compiled(1_000_000, 100_000, 12)  # the pHash searches at 1M reference
    assert prefer_compiled(27_000_000, 95_000, 10)  # the crop index of 1M images
    assert not prefer_compiled(50_000, 10_000, 12)  # CIFAR-10 size pHash search
    assert not prefer_compiled(3_000, 400, 12)

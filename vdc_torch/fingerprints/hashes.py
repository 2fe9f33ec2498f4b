"""The six OpenCV ``img_hash`` perceptual hashes behind one registry.

Methods (the names users pass; aliases ``"phash"`` -> ``"p"`` and
``"ahash"`` -> ``"average"`` are accepted everywhere a method name is):

==================  =========  ===========================================
method              size       ``a - b`` (OpenCV ``compare`` semantics)
==================  =========  ===========================================
``average``         64 bits    Hamming distance, 0..64
``p``               64 bits    Hamming distance, 0..64
``marr_hildreth``   576 bits   Hamming distance, 0..576
``radial_variance`` 40 uint8   peak normalised cross-correlation over the
                               40 cyclic shifts, ~0..1, HIGHER = more similar
                               (OpenCV starts the max at DBL_MIN, so it
                               never goes below ~0)
``block_mean``      256 bits   Hamming distance, 0..256 (OpenCV mode 0)
``color_moment``    42 float64 L2 norm of the difference times 10000
                               (OpenCV's scaling), >= 0
==================  =========  ===========================================

:func:`distance` and :func:`distance_matrix` always return a *distance*
(smaller = more similar, 0 for identical images): the raw ``compare`` value
for every method except ``radial_variance``, where it is ``1 - correlation``
(range ~0..1).

Measured distances (:func:`distance`, OpenCV 5.0).  Images: the 44 readable
photos of exif-samples/jpg (top level, gps/, exif-org/; 59..2048 px, all
different scenes, gps/ being similar-looking street views of one town) and
the 10 frames of the visdatcompy "cows" video (200x400), hashed at their
stored size.  "jpeg75" = the same image re-encoded at JPEG quality 75 (54
pairs); "resized" = scaled by 0.5 and 0.75 (INTER_AREA) and 2.0
(INTER_LINEAR) (162 pairs); "frames" = pairs of different cow frames (45,
the cow walks between them); "unrelated" = pairs of different photos (946)::

    method           jpeg75 max  resized max  frames min..median  unrelated min / 1st pct
    average              4           9            11..19               11 / 15
    p                    2           8             8..20               19 / 21
    marr_hildreth       28          90           142..203             226 / 242
    radial_variance      0.0007      0.164        0.21..0.53          0.116 / 0.238
    block_mean           4           7            33..66               35 / 59
    color_moment         3.5         4.2          1.7..12.4           2.4 / 4.3

:data:`DEFAULT_THRESHOLDS` (``distance <= threshold`` means "similar"):
average and p 10 of 64 bits (~15%, common practice), block_mean 32 of 256
bits (12.5%), marr_hildreth 115 of 576 bits (20%), radial_variance 0.15
(peak correlation >= 0.85; pHash's ph_crosscorr defaults to 0.90, but halved
100-px images reach 0.12-0.16) and color_moment 4.5.  Result on the pairs
above: every copy is under its threshold except one halved 77x100 image for
radial_variance (0.164); no unrelated pair is under it except 1 of 946 for
radial_variance and 11 of 946 for color_moment; cow frames count as similar
for p (2 of 45) and color_moment (7).  color_moment is the weakest method
here (its copy and unrelated ranges overlap); prefer p or block_mean.

Hasher objects are created lazily, once per (process, thread), so the module
is safe to use after ``fork`` (DataLoader workers) and from threads: OpenCV
hashers keep internal scratch buffers and release the GIL, so one object must
not be shared by concurrent threads.  Every image is copied before it is
handed to OpenCV, because some hashers keep a reference to their input and
overwrite it on a later call (see ``_compute``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vdc_torch.errors import InvalidParameterError, InvalidTypeError

log = logging.getLogger(__name__)

__all__ = [
    "BINARY_METHODS",
    "DEFAULT_THRESHOLDS",
    "HASH_ALIASES",
    "HASH_BITS",
    "HASH_FUNCTIONS",
    "HASH_METHODS",
    "HASH_NBYTES",
    "METHODS",
    "HashMethod",
    "ImageHash",
    "average_hash",
    "block_mean_hash",
    "color_moment_hash",
    "compare_matrix",
    "compute_hash",
    "distance",
    "distance_matrix",
    "hamming_matrix",
    "hashes_to_array",
    "hashes_to_uint64",
    "marr_hildreth_hash",
    "p_hash",
    "radial_variance_hash",
    "resolve_method",
]

@dataclass(frozen=True)
class HashMethod:
    """One OpenCV ``img_hash`` method: everything the registry knows about it, in one place."""

    name: str
    #: Size of ``ImageHash.bits`` in bytes.
    nbytes: int
    #: Compared with the Hamming distance (``bits`` is a bit string); else by OpenCV's own ``compare``.
    binary: bool
    #: Distance at or under which two images count as "similar" (see the module docstring for the measurements;
    #: binary methods are raw bit counts).
    threshold: float
    #: The ``cv2.img_hash`` factory function.
    factory: str


#: The registry, in the order the methods are listed to users.
METHODS: dict[str, HashMethod] = {m.name: m for m in (
    HashMethod("average", 8, True, 10.0, "AverageHash_create"),  # threshold: 15.6% of 64 bits
    HashMethod("p", 8, True, 10.0, "PHash_create"),  # 15.6% of 64 bits
    HashMethod("marr_hildreth", 72, True, 115.0, "MarrHildrethHash_create"),  # 20.0% of 576 bits
    HashMethod("radial_variance", 40, False, 0.15, "RadialVarianceHash_create"),  # peak correlation >= 0.85
    HashMethod("block_mean", 32, True, 32.0, "BlockMeanHash_create"),  # 12.5% of 256 bits
    HashMethod("color_moment", 42 * 8, False, 4.5, "ColorMomentHash_create"),  # 10000 x L2, OpenCV scale
)}

HASH_METHODS: tuple[str, ...] = tuple(METHODS)

#: Accepted alternative spellings, mapped to the canonical name.
HASH_ALIASES: dict[str, str] = {"phash": "p", "ahash": "average"}

#: Size of ``ImageHash.bits`` in bytes for each method.
HASH_NBYTES: dict[str, int] = {name: m.nbytes for name, m in METHODS.items()}

#: Methods compared with the Hamming distance (``bits`` is a bit string).
BINARY_METHODS: frozenset[str] = frozenset(name for name, m in METHODS.items() if m.binary)

#: Bit length of the binary methods.
HASH_BITS: dict[str, int] = {name: m.nbytes * 8 for name, m in METHODS.items() if m.binary}

#: Distance (as returned by :func:`distance`) at or under which two images count as "similar".
DEFAULT_THRESHOLDS: dict[str, float] = {name: m.threshold for name, m in METHODS.items()}

_COLOR_MOMENT_DTYPE = np.dtype("<f8")


def _choices() -> str:
    aliases = ", ".join(f"{k}->{v}" for k, v in HASH_ALIASES.items())
    return f"{', '.join(HASH_METHODS)} (aliases: {aliases})"


def resolve_method(method: str) -> str:
    """Return the canonical method name for ``method`` or an alias of it."""
    if isinstance(method, str):
        if method in HASH_NBYTES:
            return method
        if method in HASH_ALIASES:
            return HASH_ALIASES[method]
    raise InvalidParameterError(f"method={method!r} is not one of {_choices()}")


# ---------------------------------------------------------------------------
# ImageHash
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHash:
    """One image hash: the method name and the raw hash bytes.

    ``bits`` holds OpenCV's hash row as bytes: the packed bits for the binary
    methods, 40 uint8 values for ``radial_variance`` and the 42 float64 values
    (little-endian) for ``color_moment``.  Aliases are canonicalised.
    """

    method: str
    bits: bytes

    def __post_init__(self) -> None:
        method = resolve_method(self.method)
        object.__setattr__(self, "method", method)
        bits = self.bits
        if not isinstance(bits, bytes):
            if isinstance(bits, (bytearray, memoryview)):
                bits = bytes(bits)
                object.__setattr__(self, "bits", bits)
            else:
                raise InvalidTypeError(f"bits={type(bits).__name__} is not bytes")
        if len(bits) != HASH_NBYTES[method]:
            raise InvalidParameterError(
                f"len(bits)={len(bits)} does not match method={method!r}, which needs {HASH_NBYTES[method]} bytes"
            )

    @property
    def is_binary(self) -> bool:
        """True for the Hamming-compared methods (average, p, marr_hildreth, block_mean)."""
        return self.method in BINARY_METHODS

    @property
    def nbits(self) -> int:
        """Number of bits of a binary hash (raises for non-binary methods)."""
        if not self.is_binary:
            raise InvalidParameterError(
                f"method={self.method!r} is not binary; binary methods: {', '.join(sorted(BINARY_METHODS))}"
            )
        return HASH_BITS[self.method]

    def to_array(self) -> np.ndarray:
        """The hash as OpenCV returns it: shape (1, n), uint8 (float64 for color_moment)."""
        if self.method == "color_moment":
            arr = np.frombuffer(self.bits, dtype=_COLOR_MOMENT_DTYPE).astype(np.float64)
        else:
            arr = np.frombuffer(self.bits, dtype=np.uint8).copy()
        return arr.reshape(1, -1)

    @classmethod
    def from_array(cls, method: str, array: np.ndarray) -> ImageHash:
        """Build an ImageHash from an OpenCV hash array (any shape with the right size)."""
        method = resolve_method(method)
        arr = np.asarray(array)
        if method == "color_moment":
            data = np.ascontiguousarray(arr, dtype=_COLOR_MOMENT_DTYPE).tobytes()
        else:
            if arr.dtype != np.uint8:
                raise InvalidTypeError(f"array.dtype={arr.dtype} is not uint8 (method={method!r})")
            data = np.ascontiguousarray(arr).tobytes()
        return cls(method, data)

    def to_uint64(self) -> int:
        """A 64-bit binary hash (average, p) as a Python int.

        The 8 bytes are read big-endian, so the first byte OpenCV emits is the
        most significant: ``int(h.to_uint64()) == int(h.bits.hex(), 16)``.
        """
        if len(self.bits) != 8 or not self.is_binary:
            raise InvalidParameterError(f"method={self.method!r} is not a 64-bit binary hash; 64-bit methods: average, p")
        return int.from_bytes(self.bits, "big")

    def __str__(self) -> str:
        return f"{self.method}:{self.bits.hex()}"

    @classmethod
    def from_str(cls, text: str) -> ImageHash:
        """Parse ``"method:hex"`` as produced by ``str()``."""
        method, sep, hexpart = text.partition(":")
        if not sep:
            raise InvalidParameterError(f"text={text[:40]!r} is not of the form 'method:hex'")
        try:
            data = bytes.fromhex(hexpart)
        except ValueError as exc:
            raise InvalidParameterError(f"text={text[:40]!r} has an invalid hex part") from exc
        return cls(method, data)

    def __sub__(self, other: object) -> float:
        """OpenCV ``compare`` value (see module docstring for the direction)."""
        if not isinstance(other, ImageHash):
            return NotImplemented
        if other.method != self.method:
            raise InvalidTypeError(f"cannot compare method={self.method!r} with method={other.method!r}")
        return float(compare_matrix(self.method, [self], [other])[0, 0])


def distance(a: ImageHash, b: ImageHash) -> float:
    """Distance between two hashes of the same method; smaller = more similar.

    Hamming bit count for average/p/marr_hildreth/block_mean, 10000 x L2
    norm for color_moment and ``1 - peak correlation`` for radial_variance.
    """
    raw = a - b
    if a.method == "radial_variance":
        return max(0.0, 1.0 - raw)
    return raw


# ---------------------------------------------------------------------------
# Hash computation
# ---------------------------------------------------------------------------

_local = threading.local()


def _hasher(method: str) -> cv2.img_hash.ImgHashBase:
    """The cached OpenCV hasher for ``method`` for this process and thread."""
    pid = os.getpid()
    cache: dict[str, object] | None = getattr(_local, "cache", None)
    if cache is None or getattr(_local, "pid", None) != pid:
        cache = {}
        _local.cache = cache
        _local.pid = pid
    hasher = cache.get(method)
    if hasher is None:
        hasher = getattr(cv2.img_hash, METHODS[method].factory)()
        cache[method] = hasher
        log.debug("created OpenCV %s hasher in pid %d", method, pid)
    return hasher  # type: ignore[return-value]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidTypeError(f"image={type(image).__name__} is not a numpy.ndarray")
    if image.dtype != np.uint8:
        raise InvalidParameterError(f"image.dtype={image.dtype} is not uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InvalidParameterError(f"image.shape={image.shape} is not one of (H, W), (H, W, 1), (H, W, 3)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidParameterError(f"image.shape={image.shape} is empty")
    return image


def _compute(method: str, image: np.ndarray) -> ImageHash:
    # Always hand OpenCV a private copy: some img_hash implementations keep a
    # shallow reference to their input (MarrHildreth and RadialVariance for
    # gray, ColorMoment for BGR) and a later call with an image of the same
    # size writes its conversion into that memory, corrupting the caller's
    # earlier array (observed with opencv-contrib 5.0).
    img = np.array(_check_image(image), copy=True, order="C")
    arr = _hasher(method).compute(img)
    return ImageHash.from_array(method, arr)


def average_hash(image: np.ndarray) -> ImageHash:
    """OpenCV AverageHash (64 bits) of a uint8 gray or BGR image."""
    return _compute("average", image)


def p_hash(image: np.ndarray) -> ImageHash:
    """OpenCV PHash (DCT-based, 64 bits) of a uint8 gray or BGR image."""
    return _compute("p", image)


def marr_hildreth_hash(image: np.ndarray) -> ImageHash:
    """OpenCV MarrHildrethHash (576 bits) of a uint8 gray or BGR image."""
    return _compute("marr_hildreth", image)


def radial_variance_hash(image: np.ndarray) -> ImageHash:
    """OpenCV RadialVarianceHash (40 uint8) of a uint8 gray or BGR image."""
    return _compute("radial_variance", image)


def block_mean_hash(image: np.ndarray) -> ImageHash:
    """OpenCV BlockMeanHash mode 0 (256 bits) of a uint8 gray or BGR image."""
    return _compute("block_mean", image)


def color_moment_hash(image: np.ndarray) -> ImageHash:
    """OpenCV ColorMomentHash (42 float64) of a uint8 BGR image (gray is replicated to BGR)."""
    return _compute("color_moment", image)


#: Registry: canonical method name -> ``fn(image) -> ImageHash``.
HASH_FUNCTIONS: dict[str, Callable[[np.ndarray], ImageHash]] = {
    "average": average_hash,
    "p": p_hash,
    "marr_hildreth": marr_hildreth_hash,
    "radial_variance": radial_variance_hash,
    "block_mean": block_mean_hash,
    "color_moment": color_moment_hash,
}


def compute_hash(method: str, image: np.ndarray) -> ImageHash:
    """Hash ``image`` (uint8 HxW gray or HxWx3 BGR) with ``method`` (name or alias)."""
    return HASH_FUNCTIONS[resolve_method(method)](image)


# ---------------------------------------------------------------------------
# Vectorised comparison
# ---------------------------------------------------------------------------

# Bound temporaries of the chunked routines to roughly this many bytes.
_CHUNK_BYTES = 64 * 1024 * 1024


def _check_methods(method: str, hashes: Iterable[ImageHash], name: str) -> list[ImageHash]:
    out = list(hashes)
    for i, h in enumerate(out):
        if not isinstance(h, ImageHash):
            raise InvalidTypeError(f"{name}[{i}]={type(h).__name__} is not an ImageHash")
        if h.method != method:
            raise InvalidTypeError(f"{name}[{i}].method={h.method!r} differs from method={method!r}")
    return out


def hashes_to_array(hashes: Sequence[ImageHash], method: str | None = None) -> np.ndarray:
    """Stack hashes of one method: (n, nbytes) uint8, or (n, 42) float64 for color_moment.

    ``method`` is needed for an empty sequence and otherwise taken from the
    first hash; mixed methods raise TypeError.
    """
    hashes = list(hashes)
    if method is None:
        if not hashes:
            raise InvalidParameterError("method=None needs a non-empty list of hashes")
        method = hashes[0].method
    method = resolve_method(method)
    hashes = _check_methods(method, hashes, "hashes")
    buf = b"".join(h.bits for h in hashes)
    if method == "color_moment":
        return np.frombuffer(buf, dtype=_COLOR_MOMENT_DTYPE).astype(np.float64).reshape(len(hashes), 42)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(hashes), HASH_NBYTES[method]).copy()


def hashes_to_uint64(hashes: Sequence[ImageHash]) -> np.ndarray:
    """64-bit binary hashes (average or p, one method) as a uint64 array (big-endian bytes)."""
    hashes = list(hashes)
    if not hashes:
        return np.empty(0, dtype=np.uint64)
    method = hashes[0].method
    if method not in ("average", "p"):
        raise InvalidParameterError(f"method={method!r} is not a 64-bit binary hash; 64-bit methods: average, p")
    hashes = _check_methods(method, hashes, "hashes")
    return np.frombuffer(b"".join(h.bits for h in hashes), dtype=">u8").astype(np.uint64)


def _as_words(x: np.ndarray, name: str) -> np.ndarray:
    """(n, nbytes) uint8 or (n,) uint64 -> (n, nwords) uint64 (zero-padded)."""
    x = np.asarray(x)
    if x.ndim == 1 and x.dtype == np.uint64:
        return x.reshape(-1, 1)
    if x.ndim != 2 or x.dtype != np.uint8:
        raise InvalidParameterError(f"{name} has dtype={x.dtype} shape={x.shape}; expected uint8 (n, nbytes) or uint64 (n,)")
    pad = (-x.shape[1]) % 8
    if pad:
        x = np.concatenate([x, np.zeros((x.shape[0], pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(x).view(np.uint64)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (uint8 counts): the one popcount of the package (numpy >= 2 has it in C)."""
    return np.bitwise_count(x)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances, int32 (n, m).

    ``a`` and ``b`` are (n, nbytes) and (m, nbytes) uint8 packed bit strings
    (e.g. :func:`hashes_to_array`) or 1-D uint64 arrays (:func:`hashes_to_uint64`).
    """
    wa, wb = _as_words(a, "a"), _as_words(b, "b")
    if wa.shape[1] != wb.shape[1]:
        raise InvalidParameterError(f"a has {wa.shape[1]} words per hash, b has {wb.shape[1]}; they must match")
    n, m = wa.shape[0], wb.shape[0]
    out = np.zeros((n, m), dtype=np.int32)
    rows = max(1, _CHUNK_BYTES // max(1, 8 * m))
    for s in range(0, n, rows):
        acc = out[s : s + rows]
        for k in range(wa.shape[1]):
            acc += popcount64(wa[s : s + rows, k, None] ^ wb[None, :, k])
    return out


def _l2_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact pairwise L2 norms by chunked broadcasting (like cv2.norm)."""
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    out = np.empty((n, m), dtype=np.float64)
    rows = max(1, _CHUNK_BYTES // max(1, 8 * m * d))
    for s in range(0, n, rows):
        diff = a[s : s + rows, None, :] - b[None, :, :]
        out[s : s + rows] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return out


def _radial_correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenCV RadialVarianceHash.compare for all pairs.

    For each pair: both 40-vectors are centred, then for every cyclic shift
    of the second one the covariance (dot / 40) is divided by
    ``std_a * std_b + 1e-20`` (population std) and the maximum is returned;
    like OpenCV the maximum starts at DBL_MIN.
    """
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    size = a.shape[1]
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    sa = np.sqrt(np.mean(ac * ac, axis=1))
    sb = np.sqrt(np.mean(bc * bc, axis=1))
    m = b.shape[0]
    # (size * m, size): every cyclic shift of every centred b, shift-major.
    idx = (np.arange(size)[None, :] - np.arange(size)[:, None]) % size
    shifted = bc[:, idx].transpose(1, 0, 2).reshape(size * m, size)
    out = np.empty((a.shape[0], m), dtype=np.float64)
    rows = max(1, _CHUNK_BYTES // max(1, 8 * size * m))
    for s in range(0, a.shape[0], rows):
        cov = (ac[s : s + rows] @ shifted.T) / size
        peak = cov.reshape(-1, size, m).max(axis=1)
        out[s : s + rows] = peak / (sa[s : s + rows, None] * sb[None, :] + 1e-20)
    return np.maximum(out, np.finfo(np.float64).tiny)


def compare_matrix(method: str, hashes_a: Sequence[ImageHash], hashes_b: Sequence[ImageHash]) -> np.ndarray:
    """OpenCV ``compare`` values for all pairs, float64 (n, m).

    Same direction as ``a - b``: radial_variance gives a correlation
    (higher = more similar); see :func:`distance_matrix` for distances.
    """
    method = resolve_method(method)
    xa = hashes_to_array(_check_methods(method, hashes_a, "hashes_a"), method)
    xb = hashes_to_array(_check_methods(method, hashes_b, "hashes_b"), method)
    if method in BINARY_METHODS:
        return hamming_matrix(xa, xb).astype(np.float64)
    if method == "color_moment":
        return _l2_matrix(xa, xb) * 10000.0
    return _radial_correlation_matrix(xa, xb)


def distance_matrix(method: str, hashes_a: Sequence[ImageHash], hashes_b: Sequence[ImageHash]) -> np.ndarray:
    """Pairwise :func:`distance` values, float64 (n, m); smaller = more similar."""
    method = resolve_method(method)
    raw = compare_matrix(method, hashes_a, hashes_b)
    if method == "radial_variance":
        return np.clip(1.0 - raw, 0.0, None)
    return raw

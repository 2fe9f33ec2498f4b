"""EXIF: the tags of an image, printable values, the identity of a capture (camera, time, serial), and a
bounded walk of raw EXIF that names what is malformed instead of crashing on it.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

# EXIF tags (numeric ids) used for identity. Make/Model live in IFD0, the rest in the Exif sub-IFD.
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD = 0x8769
_TAG_DATETIME_ORIGINAL, _TAG_SUBSEC_ORIGINAL = 0x9003, 0x9291
_TAG_UNIQUE_ID, _TAG_BODY_SERIAL = 0xA420, 0xA431


def read_exif_tags(image: Image.Image) -> dict[str, Any]:
    """All EXIF tags of IFD0, the Exif sub-IFD and GPS as ``{tag name: value}`` (bytes made printable)."""
    from PIL import ExifTags

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about each broken tag; what is readable is returned
        try:
            exif = image.getexif()
        except Exception as exc:  # noqa: BLE001 - a malformed EXIF block: no tags, never a failure
            log.debug("EXIF unreadable: %s", exc)
            return {}
        tags: dict[str, Any] = {}
        sources = [(exif, ExifTags.TAGS)]
        for ifd_id, names in ((_EXIF_IFD, ExifTags.TAGS), (0x8825, ExifTags.GPSTAGS)):
            try:
                sources.append((exif.get_ifd(ifd_id), names))
            except Exception as exc:  # noqa: BLE001 - malformed sub-IFD: keep what is readable
                log.debug("sub-IFD %#x unreadable: %s", ifd_id, exc)
        for source, names in sources:
            try:
                for tag_id, value in source.items():
                    if tag_id in (_EXIF_IFD, 0x8825):
                        continue
                    tags[names.get(tag_id, f"Tag{tag_id:#06x}")] = printable_exif_value(value)
            except Exception as exc:  # noqa: BLE001 - a tag that cannot even be listed: keep the others
                log.debug("EXIF tags partly unreadable: %s", exc)
    return tags


def printable_exif_value(value: Any) -> Any:
    """Make an EXIF value safe to print and tabulate: short bytes decoded, blobs summarised."""
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        if len(text) <= 64:
            try:
                decoded = text.decode("ascii")
                if decoded.isprintable():
                    return decoded
            except UnicodeDecodeError:
                pass
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value.rstrip("\x00").strip()
    if isinstance(value, tuple):
        return tuple(printable_exif_value(v) for v in value)
    try:  # IFDRational and friends
        if hasattr(value, "numerator") and hasattr(value, "denominator") and not isinstance(value, int):
            return float(value) if value.denominator else None
    except Exception:  # noqa: BLE001 - an odd rational: shown as text
        return str(value)
    return value


def _read_exif_identity(
    image: Image.Image, problems: list[str], early_warnings: Sequence[str] = ()
) -> tuple[str | None, int]:
    """Return (identity key or None, orientation); append one message when the EXIF block is malformed.

    The EXIF block is checked structurally (:func:`exif_problems`) and Pillow's own corrupt-EXIF warnings (also
    ``early_warnings``, those raised while the file was opened) are collected, so a broken block is reported even
    where Pillow silently skips the broken tags.
    """
    issues: list[str] = list(early_warnings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        identity, orientation = _exif_fields(image, issues)
    raw = image.info.get("exif") if isinstance(getattr(image, "info", None), dict) else None
    if isinstance(raw, (bytes, bytearray)) and raw:
        issues.extend(exif_problems(bytes(raw)))
    issues.extend(str(w.message) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning))
    issues = list(dict.fromkeys(issues))  # unique, in order
    if issues:
        shown = "; ".join(issues[:4]) + (f"; and {len(issues) - 4} more" if len(issues) > 4 else "")
        problems.append(f"malformed EXIF, broken tags ignored and pixels used: {shown}")
    return identity, orientation


def _exif_fields(image: Image.Image, issues: list[str]) -> tuple[str | None, int]:
    try:
        exif = image.getexif()
    except Exception as exc:  # noqa: BLE001 - untrusted metadata: any failure is recorded, never raised
        issues.append(f"EXIF block unreadable ({type(exc).__name__}: {exc})")
        return None, 1
    orientation = 1
    raw = exif.get(_TAG_ORIENTATION, 1)
    try:
        value = int(raw)
        if value in range(1, 9):
            orientation = value
        elif value != 0:  # 0 ("undefined") is common and harmless
            issues.append(f"orientation {value} is not 1-8, taken as 1")
    except Exception:  # noqa: BLE001 - untrusted metadata: any failure is recorded, never raised
        issues.append(f"orientation {raw!r} is not a number, taken as 1")
    try:
        sub = exif.get_ifd(_EXIF_IFD) if _EXIF_IFD in exif else {}
    except Exception as exc:  # noqa: BLE001 - untrusted metadata: any failure is recorded, never raised
        issues.append(f"Exif sub-IFD unreadable ({type(exc).__name__}: {exc})")
        sub = {}
    try:
        taken = _clean(sub.get(_TAG_DATETIME_ORIGINAL))
        unique = _clean(sub.get(_TAG_UNIQUE_ID))
        if not taken and not unique:
            return None, orientation
        parts = [
            _clean(exif.get(_TAG_MAKE)), _clean(exif.get(_TAG_MODEL)),
            f"{taken}.{_clean(sub.get(_TAG_SUBSEC_ORIGINAL))}", unique, _clean(sub.get(_TAG_BODY_SERIAL)),
        ]
        return "|".join(parts), orientation
    except Exception as exc:  # noqa: BLE001 - untrusted metadata: any failure is recorded, never raised
        issues.append(f"identity tags unreadable ({type(exc).__name__}: {exc})")
        return None, orientation


#: Byte size of one value of each TIFF field type (1 BYTE ... 13 IFD, 16-18 BigTIFF).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_TYPE_NAMES = {1: "BYTE", 2: "ASCII", 3: "SHORT", 4: "LONG", 5: "RATIONAL", 7: "UNDEFINED", 13: "IFD"}
_IFD_POINTERS = {0x8769: "Exif", 0x8825: "GPS", 0xA005: "Interoperability"}


def exif_problems(raw: bytes, max_ifds: int = 16) -> list[str]:
    """Structural problems of a raw EXIF block (TIFF header, IFD0/IFD1 and the Exif, GPS, Interop IFDs).

    Checks what a reader relies on: the byte-order mark, IFD offsets inside the block, entry tables that do not
    run past its end, sub-IFD pointers of the right type, no IFD reached twice (a loop), value data inside the
    block and known field types. An empty list means the block is well-formed. Maker notes are not inspected.

    >>> exif_problems(b"Exif\\x00\\x00II*\\x00\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    []
    """
    data = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    n = len(data)
    if n < 8:
        return [f"EXIF block of {n} bytes is too short for its TIFF header"]
    if data[:2] not in (b"II", b"MM"):
        return [f"EXIF block starts with {data[:4]!r}, not a TIFF byte-order mark"]
    order = "<" if data[:2] == b"II" else ">"
    issues: list[str] = []
    if struct.unpack(order + "H", data[2:4])[0] != 42:
        issues.append("EXIF TIFF header has a wrong magic number")
    todo: list[tuple[str, int]] = [("IFD0", struct.unpack(order + "L", data[4:8])[0])]
    visited: dict[int, str] = {}
    while todo and len(visited) < max_ifds:
        name, offset = todo.pop(0)
        if offset in visited:
            issues.append(f"the {name} IFD pointer leads back to the {visited[offset]} IFD (offset {offset})")
            continue
        if offset < 8 or offset + 2 > n:
            issues.append(f"the {name} IFD offset {offset} lies outside the {n}-byte EXIF block")
            continue
        visited[offset] = name
        count = struct.unpack(order + "H", data[offset : offset + 2])[0]
        if offset + 2 + 12 * count > n:
            issues.append(f"the {name} IFD declares {count} entries, running past the end of the EXIF block")
            count = (n - offset - 2) // 12
        for i in range(count):
            entry = offset + 2 + 12 * i
            tag, kind, values = struct.unpack(order + "HHL", data[entry : entry + 8])
            size = _TIFF_TYPE_SIZES.get(kind)
            if size is None:
                issues.append(f"tag {tag:#06x} in the {name} IFD has unknown field type {kind}")
            elif tag in _IFD_POINTERS:
                child = _IFD_POINTERS[tag]
                if kind in (4, 13) and values == 1:
                    todo.append((child, struct.unpack(order + "L", data[entry + 8 : entry + 12])[0]))
                else:
                    issues.append(
                        f"the {child} IFD pointer has field type {_TIFF_TYPE_NAMES.get(kind, kind)} and count "
                        f"{values} instead of one LONG, "
                        f"so the {child} IFD is unreadable"
                    )
            elif size * values > 4:
                start = struct.unpack(order + "L", data[entry + 8 : entry + 12])[0]
                if start + size * values > n:
                    issues.append(f"the value of tag {tag:#06x} in the {name} IFD lies outside the EXIF block")
        if name == "IFD0" and offset + 2 + 12 * count + 4 <= n:
            following = struct.unpack(order + "L", data[offset + 2 + 12 * count : offset + 6 + 12 * count])[0]
            if following:
                todo.append(("IFD1", following))
    return issues


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    return str(value).replace("\x00", "").strip()

"""The exception family of vdc_torch.

Every library error subclasses :class:`VdcError` *and* the builtin that fits, so callers can
catch either ``VdcError`` or, say, ``FileNotFoundError``.
"""

from __future__ import annotations


class VdcError(Exception):
    """Base class of every error raised by vdc_torch."""


class ImageDecodeError(VdcError, ValueError):
    """An image file could not be read or decoded; the message names the file and the reason."""


class DatasetNotFoundError(VdcError, FileNotFoundError):
    """A dataset root does not exist or holds no image files."""


class ManifestError(VdcError, ValueError):
    """A manifest file is missing, corrupted, of an unknown version or not a manifest at all."""


class InvalidParameterError(VdcError, ValueError):
    """A parameter has a value outside its documented choices or range."""


class InvalidTypeError(InvalidParameterError, TypeError):
    """A parameter is of the wrong type (also a ``TypeError``, as Python's own argument checks raise)."""


class InsufficientEvidenceError(VdcError, ValueError):
    """Too little of a dataset could be read to decide anything: no decision rather than a guess.

    Raised when no sample is readable, or more than ``Policy.max_problem_share`` of them are problems; the
    message gives the counts, the first reasons and how to proceed.
    """


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a message naming all three."""
    if value not in choices:
        raise InvalidParameterError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value

"""Progress bars for the long phases (fingerprinting, matching): tqdm with ETA when enabled, nothing otherwise."""

from __future__ import annotations

import threading
from typing import Any, Protocol


class ProgressBar(Protocol):
    """What the long phases call: ``update(n)`` as work completes, ``close()`` at the end."""

    def update(self, n: int = 1) -> Any: ...  # noqa: D102

    def close(self) -> None: ...  # noqa: D102


class _NoBar:
    def update(self, n: int = 1) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


class _LockedBar:
    """A tqdm bar that verification threads may update concurrently."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:  # noqa: D102
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:  # noqa: D102
        with self._lock:
            self._bar.close()


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "img") -> ProgressBar:
    """A bar of ``total`` ``unit``s labelled ``desc`` (rate and ETA on standard error), or a no-op when disabled.

    ``total=None`` (a stream of unknown length) counts without an ETA.
    """
    if not enabled or (total is not None and total <= 0):
        return _NoBar()
    from tqdm.auto import tqdm

    return _LockedBar(tqdm(total=total, desc=desc, unit=unit, leave=False))

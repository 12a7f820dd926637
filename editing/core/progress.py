"""The progress bars of the toolkit's loops, and a way for a caller to follow them and to stop them.

Every long loop (DDIM inversion, the null-text optimiser, the embedding and UNet optimisers, the sampling
loop) makes its bar with this module's `tqdm`, exactly as with tqdm itself; with nobody watching it *is*
tqdm (same output, same options). A caller that wants to know how far the loops are, such as the web page's
progress bar, runs the work inside `watch(listener)`: every bar made in that block then calls
`listener(desc, n, total)` when it starts and as it advances, also when the bar is hidden (`disable=True`).
An exception the listener raises ends the loop it came from, which is how the page's Stop button stops a run
between two steps. The listener lives in a context variable, so it follows only the thread (or task) that
set it: another thread's runs are neither reported nor stopped.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from tqdm.auto import tqdm as _plain_tqdm

Listener = Callable[[str, int, "int | None"], None]  # (bar description, steps done, steps in all or None)

_LISTENER: ContextVar[Listener | None] = ContextVar("editing_progress_listener", default=None)


@contextmanager
def watch(listener: Listener) -> Iterator[None]:
    """Within the block, every bar made on this thread reports to listener (the previous one is restored)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class tqdm(_plain_tqdm):  # noqa: N801  (a drop-in for tqdm.auto.tqdm)
    """tqdm.auto.tqdm that also reports to the listener of `watch`, if one was set when it was made."""

    def __init__(self, iterable=None, desc=None, total=None, *args, **kwargs):
        super().__init__(iterable, desc, total, *args, **kwargs)
        self._listener = _LISTENER.get()
        if self._listener is None:
            return
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:  # an iterator of unknown length
                total = None
        self._watch = (desc or "", total)
        self._done = 0
        self._iterating = False
        self._listener(desc or "", 0, total)

    def _report(self, steps: int) -> None:
        self._done += steps
        self._listener(self._watch[0], self._done, self._watch[1])

    def update(self, n=1):
        shown = super().update(n)
        if self._listener is not None and not self._iterating:  # iteration reports each item itself
            self._report(n)
        return shown

    def __iter__(self):
        if self._listener is None:
            yield from super().__iter__()
            return
        items = super().__iter__()
        self._iterating = True
        try:
            for item in items:
                yield item
                self._report(1)  # after the loop body for this item has run
        finally:
            self._iterating = False
            items.close()

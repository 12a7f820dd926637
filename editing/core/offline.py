"""Loading without surprises: no hidden network request, and no library chatter on stderr.

`no_network()` makes every socket connect and host-name lookup in the process fail while it is active, and
records what was tried, so a loader can tell "this file is missing here" apart from any other failure and
say how to fetch it. It uses Python's audit hooks (PEP 578: `socket.connect` and `socket.getaddrinfo` are
audited events), not a patched socket module; an audit hook cannot be removed once added, so the process
holds one and it does nothing outside a `no_network()` block.

`quiet_libraries()` silences diffusers', transformers' and huggingface_hub's warnings and progress bars
for its block (a command's stderr is for its one `error:` line); with debug=True it changes nothing.
"""
from __future__ import annotations

import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

NETWORK_EVENTS = ("socket.connect", "socket.getaddrinfo")


class NetworkBlocked(ConnectionError):
    """Raised inside the libraries when they try the network during a no_network() block."""


@dataclass
class NetworkAttempts:
    """What the code inside one no_network() block tried to reach (event, address), in order."""

    tried: list = field(default_factory=list)

    def describe(self) -> str:
        event, address = self.tried[0]
        return f"{event} {address}"


class _Blocker:
    """The process's one audit hook and the blocks now active (any thread may load)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: list[NetworkAttempts] = []
        self._installed = False

    def hook(self, event: str, args) -> None:
        if event not in NETWORK_EVENTS or not self._active:
            return
        address = args[1] if event == "socket.connect" and len(args) > 1 else args[0] if args else "?"
        for record in list(self._active):
            record.tried.append((event, address))
        raise NetworkBlocked(f"network access is off while loading ({event} {address})")

    @contextmanager
    def block(self):
        with self._lock:
            if not self._installed:
                sys.addaudithook(self.hook)
                self._installed = True
            record = NetworkAttempts()
            self._active.append(record)
        try:
            yield record
        finally:
            with self._lock:
                self._active.remove(record)


_BLOCKER = _Blocker()  # process-wide by nature: audit hooks are per interpreter and permanent


def no_network():
    """A context manager: inside it, every connect / host lookup raises NetworkBlocked; it yields the record
    of what was tried."""
    return _BLOCKER.block()


@contextmanager
def quiet_libraries(debug: bool = False, progress: bool = False):
    """No library warnings, log lines or (unless progress) progress bars on stderr for the block;
    everything restored after. debug=True: nothing is silenced."""
    if debug:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (diffusers_logging, transformers_logging)]
    hub_bars_off = hub_utils.are_progress_bars_disabled()
    hub_logger = hub_utils.logging.get_logger("huggingface_hub")
    hub_level = hub_logger.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module, _, _ in states:
                module.set_verbosity_error()
                if not progress:
                    module.disable_progress_bar()
            hub_logger.setLevel("ERROR")
            if not progress:
                hub_utils.disable_progress_bars()
            yield
    finally:
        for module, enabled, verbosity in states:
            module.set_verbosity(verbosity)
            if enabled:
                module.enable_progress_bar()
        hub_logger.setLevel(hub_level)
        if not hub_bars_off:
            hub_utils.enable_progress_bars()

"""Failed log-ins: logged with the client's address (never the password) and slowed per address.

After ``free_failures`` wrong passwords from one address, each further try must wait
``base_delay * 2 ** (n - free_failures)`` seconds after the last failure, at most ``max_delay``;
a try inside that window is answered 429 with ``Retry-After`` without checking the password.  A
success clears the address.  The clock is injected (tests advance it instead of sleeping), and at
most ``max_clients`` addresses are remembered (the oldest are forgotten first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0


class AuthThrottle:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, free_failures: int = 5,
                 base_delay: float = 1.0, max_delay: float = 60.0, max_clients: int = 4096):  # fmt: skip
        self.clock = clock
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_clients = max_clients
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, client: str) -> float:
        """Seconds `client` must still wait before its next try is checked (0: check it now)."""
        with self._lock:
            record = self._records.get(client)
            return 0.0 if record is None else max(0.0, record.blocked_until - self.clock())

    def failed(self, client: str, what: str = "log-in") -> float:
        """Record a wrong password from `client`; returns the delay it now has to wait."""
        with self._lock:
            record = self._records.pop(client, None) or _Record()
            record.failures += 1
            excess = record.failures - self.free_failures
            delay = 0.0 if excess < 0 else min(self.max_delay, self.base_delay * 2.0 ** min(excess, 32))
            record.blocked_until = self.clock() + delay
            self._records[client] = record
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)
        log.warning("failed %s from %s (%d in a row%s)", what, client, record.failures,
                    f"; next try accepted in {delay:g} s" if delay else "")  # fmt: skip
        return delay

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._records.pop(client, None)

    def failures(self, client: str) -> int:
        with self._lock:
            record = self._records.get(client)
            return 0 if record is None else record.failures

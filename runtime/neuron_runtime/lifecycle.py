"""The serving process's lifecycle state, shared by every front end (REST and gRPC).

`ready` is what the readiness endpoints report (false while warming up and after SIGTERM; the model adds its own
condition: not ready while a worker is being replaced). `accepting` turns false when the drain starts; `stopping`
is set at SIGTERM (answers then close their connections so kept-alive clients reconnect to a ready pod).
`track()` counts a request in flight for the drain: the process exits once none is left (or the drain deadline
passes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from neuron_runtime.errors import Unavailable


@dataclass
class ServerState:
    ready: bool = False
    accepting: bool = True
    stopping: bool = False
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, model: str) -> None:
        """Raise `Unavailable` unless an inference request may start now."""
        if not self.accepting:
            raise Unavailable("the server is shutting down")
        if not self.ready and not self.stopping:
            raise Unavailable(f"model {model!r} is not ready yet")

    @contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and not self.accepting:
                self.drained.set()

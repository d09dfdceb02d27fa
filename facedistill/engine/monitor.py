"""What the trainer tells the outside world while it runs (the CLI plugs a display in)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class Monitor:
    """Receives progress events from the trainer; the library default is silent. Subclass to show them."""

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A stage with a known amount of work (building the teacher cache); yields ``advance(n)``."""
        yield lambda n=1: None

    def train_start(self, total_steps: int, start_step: int) -> None: ...

    def train_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def evaluated(self, step: int, metrics: dict[str, float]) -> None: ...

    def message(self, text: str) -> None: ...

    def train_end(self) -> None: ...

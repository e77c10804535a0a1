"""A least-recently-used dict bounded by bytes: the VLM recommender's in-memory caches of encoded items and
decoded images. A count bound is no bound here: one LLaVA-NeXT item is 6.5 MiB of float32 pixels (five 336 px
tiles), a LLaVA-1.5 item 1.3 MiB, a decoded 1000 x 750 photo 2.2 MiB; 4,096 of them were ~26 GiB per cache."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

MiB = 2**20


class ByteLRU:
    """Values with their size in bytes; putting one evicts the least recently used until the total fits `budget`.
    A value larger than the whole budget is not kept (the caller recomputes it when needed)."""

    def __init__(self, budget: int):
        if budget < 0:
            raise ValueError("a cache budget must be >= 0 bytes")
        self.budget = int(budget)
        self.nbytes = 0
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable) -> Any:
        """The value (now the most recently used), or None."""
        hit = self._data.get(key)
        if hit is None:
            return None
        self._data.move_to_end(key)
        return hit[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> Any:
        """Keep `value` (`nbytes` bytes) if it fits the budget at all; returns it."""
        if key in self._data:
            self.nbytes -= self._data.pop(key)[1]
        if nbytes > self.budget:
            return value
        while self.nbytes + nbytes > self.budget:
            self.nbytes -= self._data.popitem(last=False)[1][1]
        self._data[key] = (value, int(nbytes))
        self.nbytes += int(nbytes)
        return value

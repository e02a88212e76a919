"""A small per-process cache for expensive objects (CNN sessions, storage clients).

Spark reuses Python workers across tasks, so a worker keeps what it built; but a long-lived
worker (or the API process) that meets many models or accounts must not grow without bound.
Bounded and locked like Spark's own `pyspark.ml.model_cache.ModelCache` (an LRU of 3).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """Least-recently-used cache of at most `size` values, safe across threads."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_create(self, key: Hashable, factory: Callable[[], V]) -> tuple[V, bool]:
        """The cached value for `key`, else `factory()` stored under it; and whether it was
        built now. The factory runs under the lock, so two threads never build one key twice."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], False
            value = factory()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value, True

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

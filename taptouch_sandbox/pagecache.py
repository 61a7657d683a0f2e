"""The sandbox's page cache (``SandboxConfig.page_cache_mb``): orders pages generated once, then
served from memory, so that a benchmark measures its client and not the sandbox.

An entry is what a page request's answer holds after its envelope head: the ids served and the
``data`` array's bytes. It is keyed by the request (store, ``updated_from``/``updated_to`` in
epoch seconds, status filter, ``index``, ``count``) and valid for one generation of the data
(``OrderData.generation``, which every edit, deletion and restore moves on): a cache that sees
a newer generation empties itself first. Least recently used entries go first once the bytes held
pass the capacity. Not thread-safe on its own: the sandbox calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class PageCache:
    """Orders pages by request, for one generation of the data, up to ``capacity`` bytes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0  # bytes held
        self.generation = 0
        self.hits = self.misses = self.invalidations = 0
        self._pages: OrderedDict[Hashable, tuple[tuple[int, ...], bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def _at(self, generation: int) -> None:
        if generation != self.generation:
            if self._pages:
                self.invalidations += 1
            self.clear()
            self.generation = generation

    def get(self, key: Hashable, generation: int) -> tuple[tuple[int, ...], bytes] | None:
        """The page ``(ids, data bytes)`` of ``key`` cached at ``generation``, or None."""
        self._at(generation)
        entry = self._pages.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._pages.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Hashable, generation: int, ids: tuple[int, ...], data: bytes) -> None:
        """Keep a page generated at ``generation`` (a page larger than the whole cache is not kept)."""
        self._at(generation)
        if len(data) > self.capacity:
            return
        old = self._pages.pop(key, None)
        if old is not None:
            self.size -= len(old[1])
        self._pages[key] = (ids, data)
        self.size += len(data)
        while self.size > self.capacity:
            _, (_, dropped) = self._pages.popitem(last=False)
            self.size -= len(dropped)

    def clear(self) -> None:
        self._pages.clear()
        self.size = 0

"""A least-recently-used cache with hit and miss statistics."""

from collections import OrderedDict

DEFAULT_CAPACITY = 128
_MISSING = object()


class Cache:
    """Statistics and the mapping interface; subclasses store the entries (``_lookup``, ``put``)."""

    def __init__(self):
        self.hits = 0
        self.misses = 0

    def _lookup(self, key):
        raise NotImplementedError

    def put(self, key, value):
        raise NotImplementedError

    def get(self, key, default=None):
        try:
            value = self._lookup(key)
        except KeyError:
            self.misses += 1
            return default
        self.hits += 1
        return value

    def __getitem__(self, key):
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self.put(key, value)

    def get_or_set(self, key, factory):
        """The cached value, or ``factory()`` stored under ``key`` on a miss."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            value = factory()
            self.put(key, value)
        return value

    @property
    def hit_rate(self):
        total = self.hits + self.misses
        if total == 0:
            return 0.0
        return self.hits / total


class LRUCache(Cache):
    """Holds at most ``capacity`` entries; storing one more evicts the least recently used."""

    def __init__(self, capacity=DEFAULT_CAPACITY):
        super().__init__()
        self._entries = OrderedDict()
        self.evictions = 0
        self.capacity = capacity

    @property
    def capacity(self):
        return self._capacity

    @capacity.setter
    def capacity(self, value):
        if value < 1:
            raise ValueError(f"capacity must be at least 1, got {value}")
        self._capacity = value
        self._evict()

    def _lookup(self, key):
        value = self._entries[key]
        self._entries.move_to_end(key)
        return value

    def put(self, key, value):
        if key in self._entries:
            self._entries.move_to_end(key)
        self._entries[key] = value
        self._evict()

    def _evict(self):
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def pop(self, key, default=_MISSING):
        if key in self._entries:
            return self._entries.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def keys(self):
        """Keys from least to most recently used."""
        return list(self._entries)

    def clear(self):
        self._entries.clear()
        self.hits = self.misses = self.evictions = 0

    def __len__(self):
        return len(self._entries)

    def __contains__(self, key):
        return key in self._entries

import pytest

from textkit.cache import DEFAULT_CAPACITY, LRUCache


def test_get_and_put():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache["b"] = 2
    assert cache.get("a") == 1
    assert cache["b"] == 2
    assert len(cache) == 2


def test_get_missing_returns_default_and_counts_miss():
    cache = LRUCache(2)
    assert cache.get("nope") is None
    assert cache.get("nope", 7) == 7
    assert (cache.hits, cache.misses) == (0, 2)
    with pytest.raises(KeyError):
        cache["nope"]


def test_evicts_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert "b" not in cache
    assert cache.keys() == ["a", "c"]
    assert cache.evictions == 1


def test_put_existing_key_refreshes_recency():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"]
    assert cache["a"] == 10


def test_shrinking_capacity_evicts():
    cache = LRUCache(3)
    for key in "abc":
        cache.put(key, key.upper())
    cache.capacity = 1
    assert cache.keys() == ["c"]
    assert cache.evictions == 2


def test_capacity_default_and_validation():
    assert LRUCache().capacity == DEFAULT_CAPACITY == 128
    with pytest.raises(ValueError):
        LRUCache(0)
    cache = LRUCache(1)
    with pytest.raises(ValueError):
        cache.capacity = 0


def test_hit_rate():
    cache = LRUCache(2)
    assert cache.hit_rate == 0.0
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    assert cache.hit_rate == pytest.approx(2 / 3)


def test_get_or_set_calls_factory_once():
    cache = LRUCache(2)
    calls = []

    def factory():
        calls.append(1)
        return len(calls)

    assert cache.get_or_set("k", factory) == 1
    assert cache.get_or_set("k", factory) == 1
    assert calls == [1]


def test_pop():
    cache = LRUCache(2)
    cache.put("a", 1)
    assert cache.pop("a") == 1
    assert cache.pop("a", None) is None
    with pytest.raises(KeyError):
        cache.pop("a")


def test_clear_resets_entries_and_statistics():
    cache = LRUCache(1)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("b")
    cache.get("a")
    cache.clear()
    assert len(cache) == 0
    assert (cache.hits, cache.misses, cache.evictions) == (0, 0, 0)


def test_contains_does_not_refresh_recency():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert "a" in cache
    cache.put("c", 3)
    assert cache.keys() == ["b", "c"]

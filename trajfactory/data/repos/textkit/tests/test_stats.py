import pytest

from textkit.stats import Range, clamp, histogram, mean, median, merge_ranges, percentile, variance


def test_mean():
    assert mean([1, 2, 3, 4]) == 2.5
    assert mean(x for x in (2, 4)) == 3


def test_mean_empty():
    with pytest.raises(ValueError):
        mean([])


def test_median_odd_and_even():
    assert median([5, 1, 3]) == 3
    assert median([9, 1, 7, 3, 5]) == 5
    assert median([4, 1, 3, 2]) == 2.5
    assert median([2, 1]) == 1.5


def test_median_empty():
    with pytest.raises(ValueError):
        median([])


def test_variance_population_and_sample():
    data = [2, 4, 4, 4, 5, 5, 7, 9]
    assert variance(data) == 4.0
    assert variance(x for x in data) == 4.0
    assert variance(data, sample=True) == pytest.approx(32 / 7)
    assert variance([1, 3], sample=True) == 2.0


def test_variance_sample_needs_two_values():
    with pytest.raises(ValueError):
        variance([1], sample=True)
    assert variance([1]) == 0.0


@pytest.mark.parametrize("q, expected", [(0, 10), (25, 17.5), (90, 37), (100, 40)])
def test_percentile_interpolates(q, expected):
    assert percentile([40, 10, 30, 20], q) == pytest.approx(expected)


def test_percentile_rejects_bad_input():
    for q in (101, -1):
        with pytest.raises(ValueError):
            percentile([1, 2], q)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_clamp():
    assert clamp(5, 0, 10) == 5
    assert clamp(-3, 0, 10) == 0
    assert clamp(12, 0, 10) == 10
    assert clamp(7, 5, 5) == 5


def test_clamp_empty_interval():
    with pytest.raises(ValueError):
        clamp(1, 5, 4)


def test_histogram():
    assert histogram([0, 1, 2.5, 4.9, 5, 10, 11, -1], bins=2, low=0, high=10) == [4, 2]
    assert histogram([1, 2], bins=1, low=0, high=2) == [2]
    assert histogram([9, 10, 12, 15, 19, 20], bins=2, low=10, high=20) == [2, 3]


def test_histogram_fractional_bin_width():
    assert histogram([0.1, 0.3, 0.35, 0.9, 1.0], bins=4, low=0, high=1) == [1, 2, 0, 2]
    assert histogram([1, 3, 5, 7, 8], bins=4, low=0, high=8) == [1, 1, 1, 2]


def test_histogram_rejects_bad_bins():
    with pytest.raises(ValueError):
        histogram([1], bins=0, low=0, high=1)
    with pytest.raises(ValueError):
        histogram([1], bins=2, low=1, high=1)


def test_merge_ranges():
    assert merge_ranges([(9, 9), (4, 6), (1, 3), (5, 8)]) == [(1, 9)]
    assert merge_ranges([(1, 2), (4, 5), (2, 2)]) == [(1, 2), (4, 5)]


def test_merge_ranges_rejects_backwards_range():
    with pytest.raises(ValueError):
        merge_ranges([(3, 1)])


def test_range_len_contains_iter():
    r = Range(3, 6)
    assert len(r) == 4
    assert 3 in r and 6 in r and 7 not in r and 2 not in r
    assert list(r) == [3, 4, 5, 6]
    assert repr(r) == "Range(3, 6)" and r != Range(3, 7) and r != (3, 6)
    with pytest.raises(ValueError):
        Range(2, 1)


def test_range_intersection():
    assert Range(1, 5).intersection(Range(4, 9)) == Range(4, 5)
    assert Range(4, 9).intersection(Range(1, 5)) == Range(4, 5)
    assert Range(1, 3).intersection(Range(3, 3)) == Range(3, 3)
    assert Range(3, 5).intersection(Range(1, 3)) == Range(3, 3)
    assert Range(1, 3).intersection(Range(4, 5)) is None


def test_range_split():
    assert Range(1, 7).split(3) == [Range(1, 3), Range(4, 6), Range(7, 7)]
    assert Range(1, 3).split(1) == [Range(1, 1), Range(2, 2), Range(3, 3)]
    assert Range(1, 2).split(5) == [Range(1, 2)]
    with pytest.raises(ValueError):
        Range(1, 2).split(0)

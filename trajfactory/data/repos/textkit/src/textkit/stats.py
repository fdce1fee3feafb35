"""Small statistics over numbers, and closed integer ranges."""

PERCENT = 100


def mean(values):
    values = list(values)
    if not values:
        raise ValueError("mean of empty data")
    return sum(values) / len(values)


def median(values):
    ordered = sorted(values)
    size = len(ordered)
    if size == 0:
        raise ValueError("median of empty data")
    middle = size // 2
    if size % 2 == 1:
        return ordered[middle]
    else:
        return (ordered[middle - 1] + ordered[middle]) / 2


def variance(values, sample=False):
    """Population variance, or the sample variance (n - 1 in the denominator) with ``sample``."""
    values = list(values)
    size = len(values)
    if size < 2 and sample:
        raise ValueError("sample variance needs at least two values")
    average = mean(values)
    total = 0.0
    for value in values:
        total += (value - average) ** 2
    if sample:
        return total / (size - 1)
    return total / size


def percentile(values, q):
    """The ``q``-th percentile (0..100) with linear interpolation between neighbours."""
    if not 0 <= q <= PERCENT:
        raise ValueError(f"percentile must be within 0..{PERCENT}, got {q}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of empty data")
    rank = (len(ordered) - 1) * q / PERCENT
    lower = int(rank)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = rank - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def clamp(value, low, high):
    if low > high:
        raise ValueError(f"empty interval [{low}, {high}]")
    if value < low:
        return low
    if value > high:
        return high
    return value


def histogram(values, bins, low, high):
    """Counts of ``values`` in ``bins`` equal-width bins over [low, high]; values outside are dropped."""
    if bins < 1 or high <= low:
        raise ValueError("need at least one bin and low < high")
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        if low <= value <= high:
            index = int((value - low) / width)
            counts[min(index, bins - 1)] += 1
    return counts


def merge_ranges(ranges):
    """Merge overlapping or adjacent closed ranges: ``[(1, 3), (4, 6), (9, 9)]`` -> ``[(1, 6), (9, 9)]``."""
    merged = []
    for start, end in sorted(ranges):
        if start > end:
            raise ValueError(f"range ({start}, {end}) ends before it starts")
        if merged and start <= merged[-1][1] + 1:
            previous_start, previous_end = merged[-1]
            merged[-1] = (previous_start, max(previous_end, end))
        else:
            merged.append((start, end))
    return merged


class Range:
    """A closed integer interval ``[start, end]``."""

    def __init__(self, start, end):
        if start > end:
            raise ValueError(f"Range({start}, {end}) ends before it starts")
        self.start = start
        self.end = end

    def __len__(self):
        return self.end - self.start + 1

    def __contains__(self, value):
        return self.start <= value <= self.end

    def __iter__(self):
        return iter(range(self.start, self.end + 1))

    def __eq__(self, other):
        return isinstance(other, Range) and (self.start, self.end) == (other.start, other.end)

    def __repr__(self):
        return f"Range({self.start}, {self.end})"

    def overlaps(self, other):
        return self.start <= other.end and other.start <= self.end

    def intersection(self, other):
        """The common part of two ranges, or None when they do not overlap."""
        if not self.overlaps(other):
            return None
        return Range(max(self.start, other.start), min(self.end, other.end))

    def split(self, size):
        """Consecutive sub-ranges of at most ``size`` values."""
        if size < 1:
            raise ValueError("size must be at least 1")
        parts = []
        start = self.start
        while start <= self.end:
            end = min(start + size - 1, self.end)
            parts.append(Range(start, end))
            start = end + 1
        return parts

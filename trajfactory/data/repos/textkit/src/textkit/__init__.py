"""Small text utilities: slugs and case conversion, tokenizers, number statistics and an LRU cache."""

from textkit.cache import Cache, LRUCache
from textkit.case import camel_to_snake, slugify, snake_to_camel, title_case, truncate
from textkit.stats import Range, clamp, histogram, mean, median, merge_ranges, percentile, variance
from textkit.tokenizer import SentenceTokenizer, Token, WordTokenizer, load_stopwords

__version__ = "0.3.1"

__all__ = [
    "Cache",
    "LRUCache",
    "Range",
    "SentenceTokenizer",
    "Token",
    "WordTokenizer",
    "camel_to_snake",
    "clamp",
    "histogram",
    "load_stopwords",
    "mean",
    "median",
    "merge_ranges",
    "percentile",
    "slugify",
    "snake_to_camel",
    "title_case",
    "truncate",
    "variance",
]

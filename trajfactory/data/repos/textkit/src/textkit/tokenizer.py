"""Tokenizers: split text into tokens with offsets, count them, build n-grams."""

import re
from collections import Counter

WORD_PATTERN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
COMMENT = "#"


class Token:
    """A piece of text and where it was found: ``text[start:end]`` of the original."""

    __slots__ = ("text", "start", "end")

    def __init__(self, text, start, end):
        if start < 0 or end < start:
            raise ValueError(f"bad span {start}:{end}")
        self.text = text
        self.start = start
        self.end = end

    def __len__(self):
        return self.end - self.start

    def __eq__(self, other):
        if not isinstance(other, Token):
            return NotImplemented
        return (self.text, self.start, self.end) == (other.text, other.start, other.end)

    def __repr__(self):
        return f"Token({self.text!r}, {self.start}, {self.end})"


class BaseTokenizer:
    """Normalisation, stopwords and counting; subclasses implement ``split``."""

    def __init__(self, lowercase=True, stopwords=()):
        self.lowercase = lowercase
        self.stopwords = frozenset(word.lower() for word in stopwords)

    def normalize(self, text):
        if self.lowercase:
            return text.lower()
        return text

    def split(self, text):
        raise NotImplementedError

    def tokenize(self, text):
        tokens = []
        for token in self.split(text):
            normalized = self.normalize(token.text)
            if normalized.lower() in self.stopwords:
                continue
            tokens.append(Token(normalized, token.start, token.end))
        return tokens

    def count(self, text):
        return Counter(token.text for token in self.tokenize(text))

    def most_common(self, text, n=3):
        """The ``n`` most frequent tokens; ties are broken alphabetically so output is stable."""
        if n <= 0:
            return []
        counts = self.count(text)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:n]


class WordTokenizer(BaseTokenizer):
    """Words and numbers; an apostrophe suffix (``don't``, ``cat's``) stays with its word."""

    def __init__(self, lowercase=True, stopwords=(), min_length=1):
        super().__init__(lowercase, stopwords)
        if min_length < 1:
            raise ValueError("min_length must be at least 1")
        self.min_length = min_length

    def split(self, text):
        for match in WORD_PATTERN.finditer(text):
            if match.end() - match.start() >= self.min_length:
                yield Token(match.group(), match.start(), match.end())

    def ngrams(self, text, n=2):
        if n < 1:
            raise ValueError("n must be at least 1")
        words = [token.text for token in self.tokenize(text)]
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


class SentenceTokenizer(BaseTokenizer):
    """Sentences end at ``.``, ``!`` or ``?`` followed by whitespace; the terminator stays."""

    def __init__(self, lowercase=False):
        super().__init__(lowercase)

    def split(self, text):
        start = 0
        for match in SENTENCE_END.finditer(text):
            end = match.end()
            sentence = text[start:end].strip()
            if sentence:
                offset = text.index(sentence, start)
                yield Token(sentence, offset, offset + len(sentence))
            start = end
        rest = text[start:].strip()
        if rest:
            offset = text.index(rest, start)
            yield Token(rest, offset, offset + len(rest))


def load_stopwords(path):
    """One word per line; ``#`` starts a comment; a missing file means no stopwords."""
    words = set()
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                word = line.split(COMMENT, 1)[0].strip().lower()
                if word:
                    words.add(word)
    except FileNotFoundError:
        return frozenset()
    return frozenset(words)

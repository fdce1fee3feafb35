import pytest

from textkit.tokenizer import SentenceTokenizer, Token, WordTokenizer, load_stopwords


def test_word_tokens_carry_offsets():
    tokens = WordTokenizer().tokenize("Hello, big world")
    assert tokens == [Token("hello", 0, 5), Token("big", 7, 10), Token("world", 11, 16)]
    assert [len(t) for t in tokens] == [5, 3, 5]


def test_word_tokenizer_keeps_apostrophes():
    words = [t.text for t in WordTokenizer().tokenize("Don't stop the cat's toy")]
    assert words == ["don't", "stop", "the", "cat's", "toy"]


def test_word_tokenizer_can_keep_case():
    assert [t.text for t in WordTokenizer(lowercase=False).tokenize("Big Cat")] == ["Big", "Cat"]


def test_word_tokenizer_stopwords_are_case_insensitive():
    tokenizer = WordTokenizer(lowercase=False, stopwords=["The", "a"])
    assert [t.text for t in tokenizer.tokenize("The cat saw A dog")] == ["cat", "saw", "dog"]


def test_word_tokenizer_min_length():
    assert [t.text for t in WordTokenizer(min_length=3).tokenize("a an the cats")] == ["the", "cats"]
    with pytest.raises(ValueError):
        WordTokenizer(min_length=0)


def test_count():
    assert WordTokenizer().count("b a b c b a") == {"b": 3, "a": 2, "c": 1}


def test_most_common_breaks_ties_alphabetically():
    text = "pear apple pear fig apple kiwi"
    assert WordTokenizer().most_common(text, n=3) == [("apple", 2), ("pear", 2), ("fig", 1)]
    assert WordTokenizer().most_common("the cat and the hat", n=1) == [("the", 2)]


def test_most_common_non_positive_n():
    assert WordTokenizer().most_common("a b c", n=-1) == []


def test_ngrams():
    tokenizer = WordTokenizer()
    assert tokenizer.ngrams("one two three four") == [("one", "two"), ("two", "three"), ("three", "four")]
    assert tokenizer.ngrams("x y", n=1) == [("x",), ("y",)]
    assert tokenizer.ngrams("one two", n=3) == []


def test_ngrams_rejects_zero():
    with pytest.raises(ValueError):
        WordTokenizer().ngrams("a b", n=0)


def test_sentences_with_offsets():
    text = "It rains. Does it?  Yes!"
    tokens = SentenceTokenizer().tokenize(text)
    assert [t.text for t in tokens] == ["It rains.", "Does it?", "Yes!"]
    assert all(text[t.start : t.end] == t.text for t in tokens)


def test_sentence_without_terminator():
    text = "First one.   and the rest "
    tokens = SentenceTokenizer().tokenize(text)
    assert [t.text for t in tokens] == ["First one.", "and the rest"]
    assert [(t.start, t.end) for t in tokens] == [(0, 10), (13, 25)]


def test_sentences_keep_decimal_numbers_together():
    assert [t.text for t in SentenceTokenizer().tokenize("Pi is 3.14 roughly. Yes")] == ["Pi is 3.14 roughly.", "Yes"]


def test_token_span_equality_and_repr():
    assert Token("x", 1, 2) == Token("x", 1, 2) and Token("x", 1, 2) != Token("x", 1, 3)
    assert Token("x", 1, 2) != "x"
    assert repr(Token("x", 1, 2)) == "Token('x', 1, 2)"
    with pytest.raises(ValueError):
        Token("x", 5, 2)


def test_load_stopwords(tmp_path):
    path = tmp_path / "stop.txt"
    path.write_text("# common words\nThe\n\nand  # conjunction\nOF\n", encoding="utf-8")
    assert load_stopwords(path) == frozenset({"the", "and", "of"})


def test_load_stopwords_missing_file(tmp_path):
    assert load_stopwords(tmp_path / "missing.txt") == frozenset()

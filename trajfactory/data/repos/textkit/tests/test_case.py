import pytest

from textkit.case import camel_to_snake, slugify, snake_to_camel, title_case, truncate


def test_slugify_strips_accents_and_punctuation():
    assert slugify("Héllo, World!") == "hello-world"
    assert slugify("  !!  ") == ""


def test_slugify_custom_separator():
    assert slugify("Rock & Roll 1969", separator="_") == "rock_roll_1969"


def test_slugify_max_length_keeps_whole_words():
    assert slugify("the quick brown fox", max_length=12) == "the-quick"
    assert slugify("hello world again", max_length=11) == "hello-world"
    assert slugify("two words", max_length=20) == "two-words"
    assert slugify("ab cd ef", max_length=4) == "ab"
    assert slugify("a bc", max_length=2) == "a"


def test_slugify_max_length_cuts_a_single_long_word():
    assert slugify("supercalifragilistic", max_length=5) == "super"
    assert slugify("short", max_length=10) == "short"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("parseHTTPResponse", "parse_http_response"),
        ("HTTPServer", "http_server"),
        ("version2Name", "version2_name"),
        ("aB", "a_b"),
        ("A", "a"),
    ],
)
def test_camel_to_snake(name, expected):
    assert camel_to_snake(name) == expected


def test_snake_to_camel_lower_first():
    assert snake_to_camel("Parse_http_response") == "parseHttpResponse"


def test_snake_to_camel_upper_first():
    assert snake_to_camel("parse_http_response", upper_first=True) == "ParseHttpResponse"


def test_snake_to_camel_ignores_empty_parts():
    assert snake_to_camel("__private__name_") == "privateName"
    assert snake_to_camel("___") == ""


def test_title_case_keeps_small_words_lower():
    assert title_case("the lord OF the rings") == "The Lord of the Rings"


def test_title_case_capitalises_small_first_and_last_words():
    assert title_case("what are you looking at") == "What Are You Looking At"
    assert title_case("a") == "A"


def test_truncate_short_text_unchanged():
    assert truncate("hello world", 11) == "hello world"


def test_truncate_adds_placeholder():
    assert truncate("hello world", 8) == "hello..."
    assert truncate("hello world", 9) == "hello..."  # no space before the placeholder


def test_truncate_custom_placeholder():
    assert truncate("abcdefgh", 5, placeholder="~") == "abcd~"
    assert truncate("abcdefgh", 3) == "..."


def test_truncate_width_smaller_than_placeholder():
    with pytest.raises(ValueError, match="at least 3"):
        truncate("hello", 2)

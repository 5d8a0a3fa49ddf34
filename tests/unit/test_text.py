import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policies.text import (
    HANDLE_RULES,
    TEXT_RULES,
    TextRuleError,
    validate_handle,
    validate_tweet_text,
)
from schemas.events import from_dict


def rule_of(fn, *args, **kwargs) -> TextRuleError:
    with pytest.raises(TextRuleError) as info:
        fn(*args, **kwargs)
    return info.value


# --- tweet text ----------------------------------------------------------------

def test_plain_text_passes_unchanged():
    assert validate_tweet_text("hello world") == "hello world"


def test_nfc_normalisation():
    decomposed = "cafe\u0301"  # e + COMBINING ACUTE ACCENT
    assert validate_tweet_text(decomposed) == "caf\u00e9"


def test_limit_counts_code_points_after_nfc():
    decomposed = "e\u0301" * 280  # 560 code points as sent, 280 after NFC
    assert len(validate_tweet_text(decomposed)) == 280
    err = rule_of(validate_tweet_text, "e\u0301" * 281)
    assert err.rule == "too_long"
    assert "281" in err.detail and "280" in err.detail


def test_exact_limit_and_one_over():
    assert validate_tweet_text("a" * 280) == "a" * 280
    err = rule_of(validate_tweet_text, "a" * 281)
    assert err.rule == "too_long" and "281" in err.detail


def test_custom_limit():
    assert validate_tweet_text("abc", max_chars=3) == "abc"
    assert rule_of(validate_tweet_text, "abcd", max_chars=3).rule == "too_long"


def test_astral_emoji_counts_as_one():
    assert validate_tweet_text("\U0001F600" * 280) == "\U0001F600" * 280


def test_zwj_emoji_sequence_allowed():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # ZWJ is Cf, allowed
    assert validate_tweet_text(family) == family


@pytest.mark.parametrize("value", [None, 42, b"bytes", ["a"], 3.5])
def test_not_a_string(value):
    err = rule_of(validate_tweet_text, value)
    assert err.rule == "not_a_string"
    assert type(value).__name__ in err.detail


def test_empty():
    assert rule_of(validate_tweet_text, "").rule == "empty"


@pytest.mark.parametrize("value", [" ", "   \n  ", "\u3000", "\u00a0\n", "\u2003"])
def test_whitespace_only(value):
    assert rule_of(validate_tweet_text, value).rule == "whitespace_only"


def test_newline_allowed_inside_text():
    assert validate_tweet_text("line one\nline two\n") == "line one\nline two\n"


@pytest.mark.parametrize(
    "value,position,code",
    [
        ("\tindented", 0, "U+0009"),
        ("a\r\nb", 1, "U+000D"),
        ("abc\x00", 3, "U+0000"),
        ("x\x1b[31m", 1, "U+001B"),
        ("del\x7f", 3, "U+007F"),
        ("c1\x85", 2, "U+0085"),
    ],
)
def test_control_characters_refused_with_position(value, position, code):
    err = rule_of(validate_tweet_text, value)
    assert err.rule == "control_character"
    assert err.position == position
    assert f"position {position}" in err.detail and code in err.detail


def test_control_character_position_refers_to_submitted_text():
    # NFC would merge e + U+0301, shifting later indexes; the position is in the text as sent
    err = rule_of(validate_tweet_text, "e\u0301\u0301\t")
    assert err.position == 3


def test_tab_only_is_a_control_character_not_whitespace_only():
    assert rule_of(validate_tweet_text, "\t\t").rule == "control_character"


@pytest.mark.parametrize("value,position", [("\ud800", 0), ("ok \udfff", 3), ("a\U0001F600\udc00", 2)])
def test_lone_surrogates(value, position):
    err = rule_of(validate_tweet_text, value)
    assert err.rule == "invalid_unicode"
    assert err.position == position
    assert f"position {position}" in err.detail


def test_error_message_names_the_rule():
    err = rule_of(validate_tweet_text, "")
    assert str(err).startswith("empty:")
    assert isinstance(err, ValueError)


def test_bad_max_chars():
    with pytest.raises(ValueError):
        validate_tweet_text("a", max_chars=0)


def _expected_rule(text: str, max_chars: int) -> str | None:
    """An independent statement of the rules, checked in order."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return "invalid_unicode"
    if text == "":
        return "empty"
    if any(unicodedata.category(c) == "Cc" and c != "\n" for c in text):
        return "control_character"
    nfc = unicodedata.normalize("NFC", text)
    if nfc.strip() == "":
        return "whitespace_only"
    if len(nfc) > max_chars:
        return "too_long"
    return None


@settings(max_examples=500)
@given(text=st.text(max_size=40), max_chars=st.integers(1, 30))
def test_any_string_matches_the_rules(text, max_chars):
    expected = _expected_rule(text, max_chars)
    if expected is None:
        out = validate_tweet_text(text, max_chars)
        assert out == unicodedata.normalize("NFC", text)
        assert unicodedata.is_normalized("NFC", out)
        assert len(out) <= max_chars
    else:
        err = rule_of(validate_tweet_text, text, max_chars)
        assert err.rule == expected
        assert err.rule in TEXT_RULES


printable = st.characters(blacklist_categories=("Cc", "Cs"))


@given(st.text(printable, min_size=1, max_size=280).filter(lambda t: t.strip()))
def test_validation_is_idempotent(text):
    assume(len(unicodedata.normalize("NFC", text)) <= 280)
    once = validate_tweet_text(text)
    assert validate_tweet_text(once) == once


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_accepted_text_is_accepted_by_the_event_contract(text):
    """The Post service must never emit a tweet that consumers dead-letter."""
    try:
        clean = validate_tweet_text(text)
    except TextRuleError:
        return
    event = from_dict(
        {"type": "tweet_posted", "tweet_id": 1, "author_id": 2, "text": clean, "created_at": 0}
    )
    assert event.text == clean


# --- handles ---------------------------------------------------------------------

@pytest.mark.parametrize("handle", ["a", "jack", "Jack_Dorsey_2", "_", "0", "x" * 30])
def test_valid_handles(handle):
    assert validate_handle(handle) == handle


def test_handle_too_long():
    err = rule_of(validate_handle, "x" * 31)
    assert err.rule == "too_long" and "31" in err.detail and "30" in err.detail


def test_handle_empty():
    assert rule_of(validate_handle, "").rule == "empty"


@pytest.mark.parametrize(
    "handle,position",
    [("jack dorsey", 4), ("jack\n", 4), ("caf\u00e9", 3), ("\uff41bc", 0), ("a-b", 1), ("user@", 4), ("\u0663", 0)],
)
def test_handle_invalid_character(handle, position):
    err = rule_of(validate_handle, handle)
    assert err.rule == "invalid_character"
    assert err.position == position
    assert f"position {position}" in err.detail


@pytest.mark.parametrize("value", [None, 1, b"jack"])
def test_handle_not_a_string(value):
    assert rule_of(validate_handle, value).rule == "not_a_string"


@given(st.from_regex(r"[A-Za-z0-9_]{1,30}", fullmatch=True))
def test_regex_handles_accepted(handle):
    assert validate_handle(handle) == handle


@given(st.text(min_size=1, max_size=30))
def test_handle_rule_is_exactly_ascii_word_chars(text):
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    if set(text) <= allowed:
        assert validate_handle(text) == text
    else:
        err = rule_of(validate_handle, text)
        assert err.rule == "invalid_character"
        assert err.rule in HANDLE_RULES
        assert text[err.position] not in allowed
        assert set(text[: err.position]) <= allowed

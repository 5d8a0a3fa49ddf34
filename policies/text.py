"""Tweet text and handle validation.

``validate_tweet_text`` checks, in this order, and raises on the first failure:

1. ``not_a_string``      – the value is not a ``str``;
2. ``invalid_unicode``   – a lone surrogate (U+D800..U+DFFF), not encodable as UTF-8;
3. ``empty``             – the empty string;
4. ``control_character`` – a character of Unicode category Cc other than ``"\\n"``
   (tab, CR, NUL, ESC, DEL, C1 controls...). Format characters (Cf, e.g. ZWJ in
   emoji sequences) are allowed;
5. ``whitespace_only``   – nothing but whitespace (after NFC);
6. ``too_long``          – more than ``max_chars`` code points *after* NFC.

Positions in error details are 0-based code-point indexes into the text as
submitted (NFC never adds, removes or merges control characters or surrogates).
"""
from __future__ import annotations

import unicodedata

TEXT_RULES = frozenset(
    {"not_a_string", "invalid_unicode", "empty", "control_character", "whitespace_only", "too_long"}
)
HANDLE_RULES = frozenset({"not_a_string", "empty", "too_long", "invalid_character"})
RULES = TEXT_RULES | HANDLE_RULES

DEFAULT_MAX_CHARS = 280
HANDLE_MAX_LEN = 30
_HANDLE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class TextRuleError(ValueError):
    """A text or handle broke ``rule`` (one of ``RULES``); ``detail`` says how."""

    def __init__(self, rule: str, detail: str, position: int | None = None) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail
        self.position = position


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, None)
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def validate_tweet_text(text: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Return ``text`` NFC-normalised, or raise :class:`TextRuleError`."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not isinstance(text, str):
        raise TextRuleError("not_a_string", f"tweet text must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextRuleError(
            "invalid_unicode",
            f"lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start} is not valid Unicode text",
            exc.start,
        ) from None
    if not text:
        raise TextRuleError("empty", "tweet text is empty")
    for i, ch in enumerate(text):
        if ch != "\n" and unicodedata.category(ch) == "Cc":
            raise TextRuleError(
                "control_character",
                f"control character {_describe(ch)} at position {i} is not allowed (only \\n is)",
                i,
            )
    normalised = unicodedata.normalize("NFC", text)
    if not normalised.strip():
        raise TextRuleError("whitespace_only", f"tweet text is only whitespace ({len(text)} characters)")
    if len(normalised) > max_chars:
        raise TextRuleError(
            "too_long",
            f"tweet text is {len(normalised)} characters after NFC normalisation, the limit is {max_chars}",
        )
    return normalised


def validate_handle(handle: object, max_len: int = HANDLE_MAX_LEN) -> str:
    """Return ``handle`` unchanged if it is 1..max_len of ``[A-Za-z0-9_]``, else raise TextRuleError."""
    if not isinstance(handle, str):
        raise TextRuleError("not_a_string", f"handle must be a string, got {type(handle).__name__}")
    if not handle:
        raise TextRuleError("empty", "handle is empty")
    if len(handle) > max_len:
        raise TextRuleError("too_long", f"handle is {len(handle)} characters, the limit is {max_len}")
    for i, ch in enumerate(handle):
        if ch not in _HANDLE_CHARS:
            raise TextRuleError(
                "invalid_character",
                f"handle character {_describe(ch)} at position {i} is not allowed "
                "(only A-Z, a-z, 0-9 and _)",
                i,
            )
    return handle

"""A rule-based multilingual sentence splitter (for MLQA's original files, which carry no sentence breaks)."""

from __future__ import annotations


# Terminators that end a sentence even with no space after them (CJK, Devanagari,
# Arabic/Urdu): these scripts do not put a space between sentences.
_HARD_TERMINATORS = "。！？｡।॥؟۔"
# Terminators that need whitespace after them, so "3.5", "U.S." or "Yahoo!Inc"
# do not split.
_SOFT_TERMINATORS = ".!?…"
# Closing quotes and brackets stay with the sentence they close.
_CLOSERS = "\"'”’»」』）)]】›"


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Splits text into sentences with a small rule-based splitter.

    Rules: break after a run of CJK/Devanagari/Arabic terminators (``。！？।॥؟۔``)
    and any closing quotes/brackets; break after ``. ! ? …`` (and closers) only
    when whitespace follows and the next word does not start lower-case, and
    not after an initial ("J. Smith") or a title abbreviation ("Dr. Smith").

    Args:
        text: a paragraph.

    Returns:
        Contiguous ``[start, end)`` character spans that cover the whole text:
        a span runs to the start of the next sentence, so the whitespace
        between sentences belongs to the sentence before it and every
        character offset (an ``answer_start``) falls in exactly one span.
    """
    starts = [0]
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c in _HARD_TERMINATORS or c in _SOFT_TERMINATORS:
            hard = c in _HARD_TERMINATORS
            j = i + 1
            while j < n and (text[j] in _HARD_TERMINATORS or text[j] in _SOFT_TERMINATORS or text[j] in _CLOSERS):
                hard = hard or text[j] in _HARD_TERMINATORS
                j += 1
            k = j
            while k < n and text[k].isspace():
                k += 1
            if k >= n:
                break
            if hard:
                starts.append(k)
            elif k > j and not text[k].islower() and not _abbreviation_before(text, i):
                starts.append(k)
            i = j
        else:
            i += 1
    ends = starts[1:] + [n]
    return [(s, e) for s, e in zip(starts, ends) if text[s:e].strip()]


# Title abbreviations that precede a name ("Dr. Smith"), not a sentence break.
_ABBREVIATIONS = {"Dr", "Mr", "Mrs", "Ms", "Prof", "St", "Jr", "Sr", "Nr", "Hr", "Fr", "vs", "ca", "bzw", "Sra"}


def _abbreviation_before(text: str, i: int) -> bool:
    """True when the word ending at ``i`` (a '.') is an initial or a title abbreviation, not a sentence end."""
    if text[i] != ".":
        return False
    j = i
    while j > 0 and text[j - 1].isalpha():
        j -= 1
    return i - j == 1 or text[j:i] in _ABBREVIATIONS

"""The one SQuAD / LAReQA parser: articles, paragraphs, sentences and each question's answer sentence.

Training (:mod:`hbt.data.readers`) and evaluation (:mod:`hbt.eval.benchmarks`)
both read XQuAD-R and MLQA-R through :func:`parse_squad`, so a question's
answer sentence, and the passage group built from it, mean the same thing in
both.

A question's **passage group** (:func:`passage_group`) is
``<article>/<paragraph>/<sentence>`` of its answer sentence. Several questions
often share one answer sentence (429 of XQuAD-R's 807 training questions), and
a sentence's translations sit at the same position in every language, so the
group is shared by a positive passage and all its translations: the training
loss masks in-batch candidates of the row's own group (they are not negatives).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from hbt.data.records import ItemError
from hbt.data.sentences import split_sentences


# A SQuAD-format file that cannot be used; names the file and the item (article, paragraph, question).
SquadError = ItemError


@dataclass
class SquadQA:
    """One question and its answer sentence."""

    qid: str
    question: str
    sentence: int
    answer_crosses_sentence: bool = False


@dataclass
class SquadParagraph:
    """A paragraph as sentences with their ``[start, end)`` character spans in the context."""

    sentences: list[str]
    breaks: list[tuple[int, int]]
    qas: list[SquadQA] = field(default_factory=list)


@dataclass
class SquadArticle:
    """An article: its title and paragraphs, in file order."""

    title: str
    paragraphs: list[SquadParagraph]

    def qids(self) -> set[str]:
        """The question ids of the article."""
        return {q.qid for p in self.paragraphs for q in p.qas}


def passage_group(article: str, paragraph: int, sentence: int) -> str:
    """The id shared by an answer sentence and its translations (same position in every language)."""
    return f"{article}/{paragraph}/{sentence}"


def answer_sentence_index(breaks: list[list[int]] | list[tuple[int, int]], answer_start: int) -> int | None:
    """Index of the sentence span ``[start, end)`` holding ``answer_start``, or None."""
    for i, (s, e) in enumerate(breaks):
        if s <= answer_start < e:
            return i
    return None


def require_field(obj: Any, key: str, path: str, item: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]`` of the given type, or a :class:`SquadError` naming the file and item."""
    if not isinstance(obj, dict):
        raise SquadError(path, f"expected an object, got {type(obj).__name__}", item)
    if key not in obj:
        raise SquadError(path, f"missing field {key!r}", item)
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SquadError(path, f"field {key!r} should be {want}, got {type(value).__name__}", item)
    return value


def _sentences(par: Any, path: str, item: str, missing: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The paragraph's sentences and spans; ``missing`` says what to do without ``sentences``."""
    if isinstance(par, dict) and "sentences" not in par and missing != "require":
        context = require_field(par, "context", path, item, str)
        if not context.strip():
            raise SquadError(path, "empty text: field 'context'", item)
        if missing == "split":
            breaks = split_sentences(context)
            return [context[s:e].strip() for s, e in breaks], breaks
        return [context], [(0, len(context))]
    sentences = require_field(par, "sentences", path, item, list)
    raw_breaks = require_field(par, "sentence_breaks", path, item, list)
    breaks = []
    for b in raw_breaks:
        if not (isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in b)):
            raise SquadError(path, f"sentence_breaks entry {b!r} is not a [start, end) pair", item)
        breaks.append((b[0], b[1]))
    if len(breaks) != len(sentences):
        raise SquadError(path, f"{len(sentences)} sentences but {len(breaks)} sentence_breaks", item)
    if not all(isinstance(s, str) for s in sentences):
        raise SquadError(path, "sentences must be strings", item)
    return sentences, breaks


def _question(qa: Any, q_i: int, sentences: list[str], breaks: list[tuple[int, int]], path: str, p_item: str) -> SquadQA:
    qid = require_field(qa, "id", path, f"{p_item} question {q_i}", str)
    if not qid:
        raise SquadError(path, "missing field: 'id' is empty", f"{p_item} question {q_i}")
    item = f"question {qid}"
    question = require_field(qa, "question", path, item, str)
    if not question.strip():
        raise SquadError(path, "empty text: field 'question'", item)
    answers = require_field(qa, "answers", path, item, list)
    if not answers:
        raise SquadError(path, "no answers", item)
    for a_i, ans in enumerate(answers):
        if not isinstance(ans, dict):  # only the first answer is used, but a malformed one means a malformed file
            raise SquadError(path, f"answer {a_i} should be an object, got {type(ans).__name__}", item)
    start = require_field(answers[0], "answer_start", path, item, int)
    text = answers[0].get("text", "") if isinstance(answers[0], dict) else ""
    # The answer *text* may run past a sentence break (a few per language in
    # XQuAD-R); its start decides the answer sentence.
    sent = answer_sentence_index(breaks, start)
    if sent is None or sent >= len(sentences):
        raise SquadError(path, f"answer_start {start} lies outside every sentence", item)
    if not sentences[sent].strip():
        raise SquadError(path, f"empty text: the answer sentence {sent}", item)
    # 'Wholly inside' is judged on the sentence text: the data's sentence
    # strings can be trimmed relative to their break span.
    return SquadQA(qid, question, sent, isinstance(text, str) and text not in sentences[sent])


def parse_squad(
    raw: bytes,
    path: str,
    missing_sentences: str = "require",
    on_bad: Callable[[SquadError], None] | None = None,
) -> list[SquadArticle]:
    """Parses a SQuAD-format document (XQuAD-R / MLQA-R layout) into articles.

    Args:
        raw: the file's bytes.
        path: the file's name, for messages.
        missing_sentences: a paragraph without ``sentences``: ``require`` (an
            error), ``split`` (split the context with
            :func:`~hbt.data.sentences.split_sentences`, MLQA's original files) or
            ``context`` (the whole context is one passage, plain SQuAD).
        on_bad: called with each bad paragraph or question, which is then
            left out; ``None`` raises it. Problems of the whole file always raise.

    Returns:
        The articles in file order.

    Raises:
        SquadError: bad JSON or encoding, a missing or mistyped field, an empty
            text, a duplicate question id, or an ``answer_start`` outside every
            sentence; named by file and item.
    """
    def bad(err: SquadError) -> None:
        if on_bad is None:
            raise err
        on_bad(err)

    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SquadError(path, f"not UTF-8 at byte {e.start}", f"line {line}") from None
    except json.JSONDecodeError as e:
        raise SquadError(path, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    data = require_field(doc, "data", path, "top level", list)
    if not data:
        raise SquadError(path, "empty file: 'data' holds no articles")
    seen: set[str] = set()
    articles = []
    for a_i, art in enumerate(data):
        try:
            title = require_field(art, "title", path, f"article {a_i}", str)
            paragraphs = require_field(art, "paragraphs", path, f"article {title!r}", list)
        except SquadError as e:
            bad(e)
            continue
        paras = []
        for p_i, par in enumerate(paragraphs):
            p_item = f"article {title!r} paragraph {p_i}"
            try:
                qas = require_field(par, "qas", path, p_item, list)
                sentences, breaks = _sentences(par, path, p_item, missing_sentences)
            except SquadError as e:
                bad(e)
                paras.append(SquadParagraph([], []))  # keeps paragraph indices aligned across languages
                continue
            resolved = []
            for q_i, qa in enumerate(qas):
                try:
                    q = _question(qa, q_i, sentences, breaks, path, p_item)
                    if q.qid in seen:
                        raise SquadError(path, f"duplicate question id {q.qid!r}", f"question {q.qid}")
                except SquadError as e:
                    bad(e)
                    continue
                seen.add(q.qid)
                resolved.append(q)
            paras.append(SquadParagraph(sentences, breaks, resolved))
        articles.append(SquadArticle(title, paras))
    return articles

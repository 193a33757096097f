"""Answer extraction and the per-example metrics of :mod:`tunewise.training.evaluate`.

Each metric reads the *answer* out of a model's free text the way a careful human grader (and the
usual evaluation harnesses) would, then compares it with the gold answer read the same way:

- ``exact_match``: normalised text (:func:`normalise_answer`), after taking the text of the last
  explicit answer statement when there is one; a reply whose leading clause is the (one-clause)
  gold answers it ("False. The expression..." answers "False", "not valid" does not answer "valid");
- ``multiple_choice``: a choice label, a letter A–Z or a number 1–99 (:func:`extract_choice`);
- ``gsm8k``: the final number, compared by value (:func:`extract_final_number`, :func:`same_number`).

An *explicit answer statement* ("the answer is X", "Answer: X", "final answer = X", "#### X",
``\\boxed{X}``, "答案是 X") always wins over anything else the text mentions, so "I think the
answer is (C)." reads C, not the pronoun I. The conventions follow lm-evaluation-harness
(``lm_eval/filters/extraction.py``: the ``#### (\\-?[0-9\\.\\,]+)`` strict match, the BBH
``(?<=the answer is )(.*)(?=.)`` filter, ``MultiChoiceRegexFilter``'s Unicode punctuation table;
``lm_eval/tasks/gsm8k/gsm8k.yaml``'s ``regexes_to_ignore`` of ``,`` and ``$``) and the MATH
graders' ``\\boxed{}`` and ``\\frac`` handling (``lm_eval/tasks/minerva_math/utils.py``), written
here from those descriptions rather than copied. Where they disagree with a careful grader (the
harness's GSM8K match keeps "1,5" as 15; its flexible match reads the last number even after
"the answer is 12"), tunewise follows the grader; each function's docstring says exactly what it
accepts.

Extraction returns None when the text holds nothing the metric can read, or when the only
candidates disagree with each other ("A or B"): an unreadable answer is wrong, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Sequence

EXACT_MATCH = "exact_match"
MULTIPLE_CHOICE = "multiple_choice"
FINAL_NUMBER = "gsm8k"
LOG_LIKELIHOOD = "log_likelihood"
# The generation metrics, then the one that scores the gold answer's likelihood.
ANSWER_METRICS = (EXACT_MATCH, MULTIPLE_CHOICE, FINAL_NUMBER)
METRICS = (*ANSWER_METRICS, LOG_LIKELIHOOD)
# Old name of log_likelihood (the in-context proxy's ``loglik``); accepted and mapped, never written.
DEPRECATED_METRIC_NAMES = {"loglik": LOG_LIKELIHOOD}

_FINAL_MARKER = "####"
# "the answer is", "Final answer:", "answer =", "**Answer:**", "the correct answer would be";
# "答案是" / "答案：" for Chinese. The statement's value is what follows the last such phrase.
_STATEMENT = re.compile(
    r"(?:\banswers?\b(?:\s*\([^)]{0,20}\))?[\s*_]*(?:is\b|was\b|are\b|:|=|would\s+be\b|should\s+be\b|will\s+be\b|must\s+be\b)"
    r"|答案\s*(?:是|为|為|:|：))[\s*_:]*",
    re.IGNORECASE,
)
# A choice named as such: "option B", "choice (3)".
_NAMED_CHOICE = re.compile(r"\b(?:option|choice)\s*\(?([A-Z]|\d{1,2})\)?(?![\w'])", re.IGNORECASE)
# A label declared right: "B is correct", "(3) is the right one".
_DECLARED_RIGHT = re.compile(r"(?<![\w'’])[(\[]?([A-Z]|\d{1,2})[)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best)\b")
# A label in parentheses or brackets: "(C)", "[c]", "(12)".
_BRACKETED = re.compile(r"[(\[]\s*([A-Za-z]|\d{1,2})\s*[)\]]")
# A capital letter standing alone as a word.
_LONE_CAPITAL = re.compile(r"(?<![\w'’-])([A-Z])(?![\w'’-])")
# A choice label at the very start of the answer, followed by a delimiter: "B) 42", "B. Paris", "3: x".
_LEADING_LABEL = re.compile(r"[\s*_\"'`]*[(\[]?([A-Za-z]|\d{1,2})(?:[)\].:]|\s*$)")
# A lone label as a whole gold answer: "B", "(B)", "(3)", "B." (a bare number is a final number).
_GOLD_LABEL = re.compile(r"\s*(?:\(([A-Za-z]|\d{1,2})\)|\[([A-Za-z]|\d{1,2})\]|([A-Z])\.?)\s*")
# "A or B", "A and C": the capitals are choices, not the article or the pronoun.
_CONJUNCTION = re.compile(r"\s(?:or|and|nor|vs)\b")
# Where a reply's leading clause ends: a comma, semicolon, colon or sentence end before a space,
# CJK punctuation, or a line break ("3.5" and "1,234" are not split).
_CLAUSE_END = re.compile(r"[,;:.!?](?=\s|$)|[，；：。！？\n]")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
# Characters that act as a minus or plus sign before a number; NFKC already maps the full-width
# and small forms to "-" and "+", but not the minus sign or the dashes.
_SIGNS = {"-": -1, "+": 1, "\u2212": -1, "\u2012": -1, "\u2013": -1, "\u2014": -1, "\u2796": -1}
_CURRENCY = "$€£¥₹₩₽¢"
_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212\u2012\u2013\u2014\u2796])?[" + _CURRENCY + r"]?\s?"
    r"(?P<body>\d(?:[\d,.']*\d)?)"
    r"(?:\s?/\s?(?P<denominator>\d+)(?![\d.,]\d))?"
    r"(?P<percent>\s?%)?"
)
# Punctuation removed from the end of an exact-match answer: every Unicode "other punctuation"
# (".", "。", "!", "؟", "।", "…") except the ones that carry meaning inside an answer.
_KEEP_AT_END = set("%‰‱#&@*/\\'\"")
_ENCLOSING = (("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"),
              ("「", "」"), ("『", "』"), ("**", "**"), ("__", "__"), ("`", "`"), ("*", "*"), ("_", "_"))


def _unicode_form(text: str) -> str:
    """NFKC: full-width and compatibility forms become their plain equivalents (``Ａ`` → ``A``,
    ``１２`` → ``12``, ``ﬁ`` → ``fi``); non-breaking spaces become spaces."""
    return unicodedata.normalize("NFKC", text)


def normalise_answer(text: str) -> str:
    """The exact-match form of an answer.

    In order: Unicode NFKC (full-width letters and digits, compatibility forms, no-break spaces),
    case folding, whitespace collapsed to single spaces, then, repeated until nothing changes:
    sentence punctuation of any script removed from the end (``.``, ``。``, ``!``, ``?``, ``؟``,
    ``।``, ``…``, ``:``, ``,``; but not ``%``, ``#``, ``/`` or quotes, which can be part of an
    answer) and one enclosing pair removed (quotes of any style, brackets, Markdown ``**``, ``_``
    or backticks). Leading signs, inner punctuation and articles are kept: ``-5`` is not ``5`` and
    "a" can be a choice.
    """
    text = " ".join(_unicode_form(text).casefold().split())
    while True:
        previous = text
        # Only while real content remains: "( )" or "..." stay as written (Dyck-language answers).
        while (text and unicodedata.category(text[-1]) == "Po" and text[-1] not in _KEEP_AT_END
               and _has_content(text[:-1])):
            text = text[:-1].rstrip()
        for opening, closing in _ENCLOSING:
            inner = text[len(opening):len(text) - len(closing)]
            if (len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing)
                    and _has_content(inner)):
                text = inner.strip()
                break
        if text == previous:
            return text


def _has_content(text: str) -> bool:
    return any(character.isalnum() for character in text)


def answer_statement(text: str) -> str | None:
    """The text after the last explicit answer statement, or None when there is none.

    Statements: ``#### X`` (GSM8K), ``\\boxed{X}`` (MATH: the box's content), and phrases such as
    "the answer is X", "Answer: X", "final answer = X", "the correct answer would be X",
    "答案是 X", in any case. The value runs to the end of its line.
    """
    text = _unicode_form(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    if _FINAL_MARKER in text:
        return text.rsplit(_FINAL_MARKER, 1)[1].strip().split("\n", 1)[0]
    matches = list(_STATEMENT.finditer(text))
    for match in reversed(matches):
        value = text[match.end():].split("\n", 1)[0].strip()
        if value:
            return value
    return None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced; None when there is none."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    depth, position = 1, starts[-1].end()
    for index in range(position, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[position:index].strip()
    return None


def _exact_match_answer(text: str, gold: str | None = None) -> str:
    """The normalised answer: the first sentence of the last answer statement, else the whole
    text; or its leading clause when that alone equals a one-clause ``gold``."""
    statement = answer_statement(text)
    if statement is not None:
        # "The answer is Paris. It is the capital" -> "Paris": a statement ends with its sentence.
        text = re.split(r"(?<=[.!?。！？])\s", statement, maxsplit=1)[0]
    answer = normalise_answer(text)
    if gold is not None and answer != gold and not _CLAUSE_END.search(gold):
        # "No, the sentence is implausible" answers "no"; "not valid" does not answer "valid".
        leading = normalise_answer(_CLAUSE_END.split(text.strip(), maxsplit=1)[0])
        if leading == gold:
            return leading
    return answer


def _label(raw: str) -> str:
    return raw.upper() if raw.isalpha() else str(int(raw))


def _gold_label(target: str) -> str | None:
    match = _GOLD_LABEL.fullmatch(_unicode_form(target))
    if match is None:
        return None
    return _label(next(group for group in match.groups() if group))


def extract_choice(text: str, numbered: bool = False) -> str | None:
    """The choice label the answer picks: a capital letter A–Z, or with ``numbered`` a number.

    Read in this order, the first rule that finds a label wins:

    1. an explicit answer statement ("the answer is (C)", "Answer: c)", "答案是 B"): the first
       label right after the last statement;
    2. a label declared right: "B is correct", "(3) is the right one" (the last one);
    3. a label in parentheses or brackets, "(C)" or "[3]", that ends the answer, unless it is
       one of alternatives ("(A) or (B)");
    4. a label opening the answer before a delimiter or alone: "B", "(B)", "B) 42", "B. Paris";
    5. a choice named as such: "option B", "choice (3)" (the last one);
    6. the one label in parentheses or brackets, when all of them agree;
    7. (letters only) a capital standing alone in prose, when exactly one distinct one remains
       after dropping the pronoun "I" and the article "A" before a lower-case word.

    Lower-case letters count only inside a statement, brackets or at the start with a delimiter
    ("b)"), so the article "a" is never a choice. Full-width forms are normalised first. Returns
    None when nothing is found, or when rule 6 or 7 meets labels that disagree ("A or B").
    """
    text = _unicode_form(text)

    def wanted(raw: str) -> bool:
        return raw.isdigit() == numbered and (not raw.isdigit() or 1 <= int(raw) <= 99)

    statement = answer_statement(text)
    if statement is not None:
        label = _first_label(statement, numbered)
        if label is not None:
            return label
    declared = [m.group(1) for m in _DECLARED_RIGHT.finditer(text) if wanted(m.group(1))]
    if declared:
        return _label(declared[-1])
    bracketed = [m for m in _BRACKETED.finditer(text) if wanted(m.group(1))]
    if bracketed:
        last = bracketed[-1]
        # "(A) or (B)" at the end is undecided; "(A) is wrong, so (C)" ends on its answer.
        alternative = len(bracketed) > 1 and re.fullmatch(r"[\s,/]*(?:(?:or|and|nor|vs\.?)[\s,]*)?",
                                                          text[bracketed[-2].end():last.start()], re.IGNORECASE)
        if not text[last.end():].strip(" \t\n.!?。"):
            return None if alternative else _label(last.group(1))
    leading = _LEADING_LABEL.match(text)
    if leading and wanted(leading.group(1)) and (leading.group(1).isupper() or leading.group(0).rstrip()[-1:] in ")]"
                                                 or leading.group(1).isdigit()):
        return _label(leading.group(1))
    named = [m.group(1) for m in _NAMED_CHOICE.finditer(text) if wanted(m.group(1))]
    if named:
        return _label(named[-1])
    if bracketed:
        labels = {_label(m.group(1)) for m in bracketed}
        return labels.pop() if len(labels) == 1 else None
    if numbered:
        return None
    capitals = set()
    for match in _LONE_CAPITAL.finditer(text):
        letter, after = match.group(1), text[match.end():match.end() + 2]
        if letter in "AI" and re.match(r"\s[a-z]", after) and not _CONJUNCTION.match(text, match.end()):
            continue
        capitals.add(letter)
    return capitals.pop() if len(capitals) == 1 else None


def _first_label(statement: str, numbered: bool) -> str | None:
    """The label at the start of an answer statement's value: "(C).", "c)", "B", "option 3"."""
    statement = re.sub(r"^(?:option|choice)\s*", "", statement.lstrip(" *_\"'`"), flags=re.IGNORECASE)
    pattern = (r"[(\[]?\s*(\d{1,2})\s*[)\]]?(?!\d)" if numbered
               else r"[(\[]\s*([A-Za-z])\s*[)\]]|([a-z])\)|([A-Z])(?![\w'’])")
    match = re.match(pattern, statement)
    if match is None:
        return None
    return _label(next(group for group in match.groups() if group))


@dataclass(frozen=True)
class Number:
    """A number read from text: its value, and whether it was written with ``%``.

    ``value`` is exact (a :class:`~fractions.Fraction`), so ``0.1 + 0.2`` style rounding never
    decides a verdict; ``percent`` keeps "50%" apart from 50 where that matters.
    """

    value: Fraction
    percent: bool = False

    def __str__(self) -> str:
        if self.value.denominator == 1:
            text = str(self.value.numerator)
        else:
            decimal = Decimal(self.value.numerator) / Decimal(self.value.denominator)
            exact = Fraction(decimal) == self.value
            text = format(decimal.normalize(), "f") if exact else f"{self.value.numerator}/{self.value.denominator}"
        return text + ("%" if self.percent else "")


def _parse_body(body: str) -> list[Fraction] | None:
    """The value(s) of a digit run with separators: one value, or several for a list ("3,4,5").

    Thousands separators (``,``, ``.``, ``'``, thin or no-break spaces) must group by three;
    with both ``,`` and ``.`` the last one is the decimal mark; a lone ``,`` is a thousands
    separator before exactly three digits ("1,234") and a decimal comma otherwise ("1,5", "0,250").
    """
    groups = re.split(r"([',.])", body)
    digits, separators = groups[0::2], groups[1::2]
    if not separators:
        return [Fraction(int(body))]

    def grouped_by_three(runs: list[str]) -> bool:
        return len(runs[0]) <= 3 and all(len(run) == 3 for run in runs[1:])

    last = separators[-1]
    if len(set(separators)) > 1:
        # Mixed marks: the last one is the decimal mark, once; the others separate thousands.
        if last == "'" or separators.count(last) != 1 or not grouped_by_three(digits[:-1]):
            return None
        return [Fraction(Decimal("".join(digits[:-1]) + "." + digits[-1]))]
    if len(separators) > 1 or last == "'":
        if grouped_by_three(digits):
            return [Fraction(int("".join(digits)))]
        # "3,4,5" is a list and "1.2.3" a version; either way the numbers are its parts.
        return [Fraction(int(run)) for run in digits]
    whole, part = digits
    if last == "," and len(part) == 3 and len(whole) <= 3 and not whole.startswith("0"):
        return [Fraction(int(whole + part))]
    return [Fraction(Decimal(whole + "." + part))]


def find_numbers(text: str) -> list[Number]:
    """Every number in ``text``, in order, as exact values.

    Accepts a sign written with any minus or dash character (``-``, ``−``, ``‒``, ``–``, full-width
    ``－``) or ``+``, when it does not join two words or numbers ("2019-2020" is two positive
    numbers); a currency symbol; thousands separators (``1,234``, ``1.234.567``, ``1 234``,
    ``1'234``) told apart from decimal commas (``1,5``, ``1.234,5``); fractions ``3/4`` and
    LaTeX ``\\frac{3}{4}``; a trailing ``%``. Numbers spelled out in words are not read.
    """
    # Thin and no-break spaces between digit groups are thousands separators; NFKC would turn them
    # into plain spaces, which are not (a plain space separates two numbers).
    text = re.sub(r"(?<=\d)[\u00a0\u202f\u2009](?=\d{3})", "'", text)
    text = _LATEX_FRACTION.sub(lambda m: f"{m.group(1)}/{m.group(2)}", _unicode_form(text))
    numbers: list[Number] = []
    for match in _NUMBER.finditer(text):
        parts = _parse_body(match.group("body"))
        if parts is None:
            continue
        sign = 1
        # A dash between two words or numbers joins them ("2019-2020", "x-3"); elsewhere it is a sign.
        before = text[match.start() - 1] if match.start() else ""
        if match.group("sign") is not None and not (before.isalnum() or (before and before in ")]}")):
            sign = _SIGNS[match.group("sign")]
        percent = match.group("percent") is not None
        if match.group("denominator") is not None and len(parts) == 1:
            denominator = int(match.group("denominator"))
            if denominator == 0:
                continue
            numbers.append(Number(sign * parts[0] / denominator, percent))
            continue
        values = [sign * parts[0], *parts[1:]]
        numbers.extend(Number(value) for value in values[:-1])
        numbers.append(Number(values[-1], percent))
    return numbers


def extract_final_number(text: str) -> Number | None:
    """The number the answer ends on: the first number of the last explicit answer statement
    (``#### X``, ``\\boxed{X}``, "the answer is X", "Answer: X"), else the last number in the
    text. None when there is no number. See :func:`find_numbers` for what counts as a number."""
    statement = answer_statement(text)
    if statement is not None:
        numbers = find_numbers(statement)
        if numbers:
            return numbers[0]
    numbers = find_numbers(text)
    return numbers[-1] if numbers else None


def same_number(predicted: Number | None, gold: Number | None) -> bool:
    """Equal values; a percentage also equals its number written without ``%`` (50% = 50) and
    its fraction of one (50% = 0.5), as a grader accepts either way of writing it."""
    if predicted is None or gold is None:
        return False
    if predicted.value == gold.value:
        return True
    if predicted.percent != gold.percent:
        as_fraction = lambda n: n.value / 100 if n.percent else n.value  # noqa: E731
        return as_fraction(predicted) == as_fraction(gold)
    return False


def extract_answer(metric: str, text: str, target: str | None = None) -> str | None:
    """What ``metric`` reads from ``text``, as a string for the per-sample log.

    ``exact_match``: the normalised answer (with a ``target``, its leading clause when only
    that equals the target: "No, it is not" answers "no"); ``multiple_choice``: the label (numbered when the
    ``target`` is a numbered label such as "(2)"); ``gsm8k``: the final number (``"1234.5"``,
    ``"3/4"``, ``"50%"``). None when nothing can be read.
    """
    if metric == EXACT_MATCH:
        return _exact_match_answer(text, None if target is None else _exact_match_answer(target))
    if metric == MULTIPLE_CHOICE:
        numbered = target is not None and (_gold_label(target) or "").isdigit()
        return extract_choice(text, numbered)
    number = extract_final_number(text)
    return None if number is None else str(number)


def extract_gold(metric: str, target: str) -> str | None:
    """What ``metric`` reads from a gold answer: the same as :func:`extract_answer`, except that
    a multiple-choice gold must be a lone label ("B", "(B)", "(3)")."""
    if metric == MULTIPLE_CHOICE:
        return _gold_label(target)
    return extract_answer(metric, target)


def is_correct(metric: str, prediction: str, target: str) -> bool:
    """Whether ``prediction`` answers ``target`` under ``metric`` (see the module docstring)."""
    if metric == FINAL_NUMBER:
        return same_number(extract_final_number(prediction), extract_final_number(target))
    gold = extract_gold(metric, target)
    return gold is not None and extract_answer(metric, prediction, target) == gold


def detect_metric(targets: Sequence[str]) -> str:
    """The metric ``auto`` chooses for a task with these gold answers.

    ``gsm8k`` when every gold is a lone number or has a ``####`` final number; ``multiple_choice``
    when every gold is a lone choice label ("B", "(B)", "(3)"); else ``exact_match``.
    """
    if not targets:
        return EXACT_MATCH
    if all(_is_number_gold(t) for t in targets):
        return FINAL_NUMBER
    if all(_gold_label(t) is not None for t in targets):
        return MULTIPLE_CHOICE
    return EXACT_MATCH


def _is_number_gold(target: str) -> bool:
    if _FINAL_MARKER in target:
        return extract_final_number(target) is not None
    numbers = find_numbers(target)
    stripped = re.sub(r"[\s$€£¥₹%.,'+\-−‒–—/\d\u00a0\u202f\u2009]", "", _unicode_form(target))
    return len(numbers) == 1 and not stripped


def canonical_metric(metric: str) -> str:
    """``metric`` with a deprecated alias mapped to its current name (``loglik`` → ``log_likelihood``)."""
    return DEPRECATED_METRIC_NAMES.get(metric, metric)


__all__ = [
    "ANSWER_METRICS",
    "DEPRECATED_METRIC_NAMES",
    "EXACT_MATCH",
    "FINAL_NUMBER",
    "LOG_LIKELIHOOD",
    "METRICS",
    "MULTIPLE_CHOICE",
    "Number",
    "answer_statement",
    "canonical_metric",
    "detect_metric",
    "extract_answer",
    "extract_choice",
    "extract_final_number",
    "extract_gold",
    "find_numbers",
    "is_correct",
    "normalise_answer",
    "same_number",
]

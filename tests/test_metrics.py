"""Answer extraction, case by case, against what a careful human grader accepts."""

from __future__ import annotations

import pytest

from tunewise.training.metrics import (
    canonical_metric,
    detect_metric,
    extract_answer,
    extract_choice,
    extract_final_number,
    find_numbers,
    is_correct,
    normalise_answer,
)

# -- multiple choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I think the answer is (C).", "C"),  # the case: not the pronoun I
        ("Because of (E), the answer is A", "A"),  # a statement beats an earlier bracket
        ("So the answer is (B). Actually no, the answer is (D).", "D"),  # the last statement
        ("Answer: **c)**", "C"),
        ("The correct answer would be option (d).", "D"),
        ("答案是 B。", "B"),
        ("(B)", "B"),
        ("D) four", "D"),
        ("B. Paris", "B"),
        ("Ｃ", "C"),  # full-width
        ("I choose (K) because K is the only prime", "K"),  # letters beyond D
        ("Option H fits best.", "H"),
        ("B is correct because C is wrong", "B"),
        ("I think it's B", "B"),
        ("A dog barks, so (F)", "F"),
        ("A or B", None),  # undecided: a grader marks it wrong
        ("(A) or (B)", None),
        ("(A) is wrong, so (C)", "C"),
        ("(A) is tempting but (C) is right", "C"),  # a label declared right
        ("no letter here, only lowercase a b", None),
        ("ABC is not a letter", None),
        ("The answer is a matter of taste", None),
    ],
)
def test_extract_choice_letters(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 3", "3"),
        ("(2)", "2"),
        ("Option 4 is correct.", "4"),
        ("I pick choice (12)", "12"),
        ("2) The second", "2"),
        ("Answer: [1]", "1"),
        ("Between (1) and (3), the answer is (3).", "3"),
        ("（２）", "2"),  # full-width brackets and digit
        ("1 or 2, hard to say", None),
        ("none of them", None),
    ],
)
def test_extract_choice_numbered(text, expected):
    assert extract_choice(text, numbered=True) == expected


def test_multiple_choice_verdicts_follow_the_gold_label_kind():
    assert is_correct("multiple_choice", "I think the answer is (C).", "(C)")
    assert is_correct("multiple_choice", "The answer is 2.", "(2)")
    assert not is_correct("multiple_choice", "The answer is 3.", "(2)")
    assert is_correct("multiple_choice", "(J) ten", "J")
    assert not is_correct("multiple_choice", "the blue jay", "(A)")
    assert extract_answer("multiple_choice", "Option 3", "(2)") == "3"


# -- final number ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("The answer is −5.", "-5"),  # U+2212 minus sign
        ("It drops to ‒3 degrees", "-3"),  # U+2012 figure dash
        ("It is +7", "7"),
        ("－１２", "-12"),  # full-width minus and digits
        ("It costs $1,000.50 in total", "1000.5"),
        ("Das macht 1,5 kg", "1.5"),  # a decimal comma
        ("Total: 1.234,56 €", "1234.56"),
        ("1.234.567 Einwohner", "1234567"),
        ("0,250 l", "0.25"),
        ("from 2019-2020", "2020"),  # a range, not minus 2020
        ("The answer is 12. Check: 3 * 4 = 12, plus 5 spare", "12"),  # the statement wins
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("so 1/3 of them", "1/3"),
        ("It grew by 50%.", "50%"),
        ("no number at all", None),
        ("first 5, then 12, so 18", "18"),
        ("1\u202f234\u202f567 people", "1234567"),  # narrow no-break spaces group thousands
        ("x-3", "3"),  # a hyphen joining a word is no sign
    ],
)
def test_extract_final_number(text, expected):
    number = extract_final_number(text)
    assert (None if number is None else str(number)) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "right"),
    [
        ("so the total is 72.0", "48 + 24 = 72\n#### 72", True),
        ("#### 1,000", "#### 1000", True),
        ("#### 71 then 72", "#### 72", False),
        ("I do not know", "#### 72", False),
        ("The temperature is −4", "-4", True),
        ("The temperature is 4", "-4", False),
        ("That is 0.75 of the cake", "3/4", True),
        ("6/8 of the cake", "3/4", True),
        ("The answer is 50", "50%", True),  # the unit left out
        ("The answer is 0.5", "50%", True),  # the same share
        ("The answer is 5", "50%", False),
        ("It costs 1,5 euros", "1.5", True),
        ("It costs 1,500 euros", "1.5", False),  # thousands, not a decimal comma
        ("3/4", "#### 4", False),  # a fraction is one number, not a final 4
    ],
)
def test_final_number_verdicts(prediction, gold, right):
    assert is_correct("gsm8k", prediction, gold) is right


def test_find_numbers_reads_lists_as_separate_numbers():
    assert [str(n) for n in find_numbers("3,4,5")] == ["3", "4", "5"]
    assert [str(n) for n in find_numbers("-2 and -3")] == ["-2", "-3"]


# -- exact match -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Yes.  ", "yes"),
        ("The  Answer\n is\tTrue", "the answer is true"),
        ("valid...", "valid"),
        ("3.5", "3.5"),
        ("", ""),
        ("Ｐａｒｉｓ。", "paris"),  # full-width letters, ideographic full stop
        ('"Paris."', "paris"),
        ("**Paris**", "paris"),
        ("नमस्ते।", "नमस्ते"),  # Devanagari danda
        ("هل؟", "هل"),  # Arabic question mark
        ("-5.", "-5"),  # the sign stays
        ("50%", "50%"),  # the percent sign stays
        ("] ) }", "] ) }"),  # Dyck-language answers are all punctuation and stay whole
        ("ﬁnal", "final"),  # a ligature
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "right"),
    [
        (" True. ", "true", True),
        ("True because", "True", False),
        ("The answer is True.", "True", True),
        ("So the answer is valid. It follows.", "valid", True),
        ("Ｙｅｓ！", "Yes", True),
        ("「東京」", "東京", True),
        ("Answer: No", "No", True),
        ("not valid", "valid", False),
        ("Paris, France", "Paris", True),  # the reply leads with the answer
        ("No, the sentence is implausible.", "no", True),
        ("False. The expression evaluates to False", "False", True),
        ("True or False", "True", False),
        ("Paris", "Paris, France", False),  # a one-word reply does not give a two-part answer
        ("3.5 kilograms", "3.5", False),  # exact match keeps units; use gsm8k for numbers
        ("(A)", "(A)", True),
        ("] ) }", "] ) }", True),
        ("] )", "] ) }", False),
    ],
)
def test_exact_match_verdicts(prediction, gold, right):
    assert is_correct("exact_match", prediction, gold) is right


# -- choosing the metric, and its name ---------------------------------------------------------


def test_detect_metric():
    assert detect_metric(["3 + 4 = 7\n#### 7", "#### 10"]) == "gsm8k"
    assert detect_metric(["#### 7", "8"]) == "gsm8k"
    assert detect_metric(["-3", "1,234", "50%"]) == "gsm8k"
    assert detect_metric(["(A)", "(C)", " B "]) == "multiple_choice"
    assert detect_metric(["(1)", "(4)"]) == "multiple_choice"
    assert detect_metric(["(A)", "True"]) == "exact_match"
    assert detect_metric(["2019-2020"]) == "exact_match"


def test_loglik_is_the_deprecated_name_of_log_likelihood():
    assert canonical_metric("loglik") == "log_likelihood"
    assert canonical_metric("exact_match") == "exact_match"

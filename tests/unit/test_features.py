"""Contexts: shared-prefix stripping, the projection's scale, the query analysis."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conduit_workers.domain.features as F
from conduit_workers.domain.features import ContextBuilder, SharedPrefixes, analyse, embedding_text

FEW_SHOT = "".join(
    f"Context: example sentence number {i} of the prompt.\nAnswer: Yes\n\n" for i in range(8)
)


def test_a_prefix_shared_by_the_chunk_is_stripped():
    sp = SharedPrefixes(min_chars=200)
    items = [
        "Context: the court overrules smith v. jones.\nAnswer:",
        "Context: we affirm the judgment below in part.\nAnswer:",
    ]
    out = sp([FEW_SHOT + items[0], FEW_SHOT + items[1], "a plain question with no template"])
    assert out == items + ["a plain question with no template"]


def test_a_remembered_prefix_is_stripped_from_a_prompt_that_arrives_alone():
    sp = SharedPrefixes(min_chars=200)
    sp(
        [
            FEW_SHOT + "Context: one item here, long enough.",
            FEW_SHOT + "Context: another item, also long.",
        ]
    )
    assert sp([FEW_SHOT + "Context: a later lonely item of some length."]) == [
        "Context: a later lonely item of some length."
    ]


def test_duplicates_and_short_shared_openings_stay_whole():
    sp = SharedPrefixes(min_chars=200)
    q = "Which of the following is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    assert sp([q, q]) == [q, q]  # nothing would remain
    a, b = (
        "Which of the following is true? " + "x" * 30,
        "Which of the following is true? " + "y" * 30,
    )
    assert sp([a, b]) == [a, b]  # under min_chars: an ordinary shared phrase


def test_prefix_memory_is_bounded():
    sp = SharedPrefixes(min_chars=50, capacity=3)
    for k in range(10):
        pre = f"template {k} " + "z" * 60 + "\n"
        sp([pre + "first item text here ok", pre + "second item text here ok"])
    assert len(sp._known) <= 3


def test_embedding_text_keeps_the_end():
    assert embedding_text("abcdef", 3) == "def"
    assert embedding_text("abc", 10) == "abc"


def test_context_has_unit_scale_and_is_the_same_in_every_process():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((500, 384))
    texts = ["hello"] * 500
    a, _ = ContextBuilder(384, 16).build(e, texts)
    b, _ = ContextBuilder(384, 16).build(e, texts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (500, 1 + 16 + 3)
    assert (a[:, 0] == 1).all()
    # E‖P·e‖² ≈ 1 for unit e: a wider context makes Thompson Sampling explore at random
    assert np.mean(np.sum(a[:, 1:17] ** 2, axis=1)) == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("def add(a, b):\n    return a + b", "code"),
        ("Solve the equation 3x + 2 = 11", "math"),
        ("Write a short poem about rain", "writing"),
        ("Explain why the sky is blue", "reasoning"),
        ("Bonjour", "other"),
    ],
)
def test_analysis_labels_the_domain(text, domain):
    a = analyse(text)
    assert a.domain == domain
    assert 0.0 <= a.complexity <= 1.0 and a.chars == len(text)


def _analyse_by_patterns_alone(text: str) -> tuple[str, float]:
    """The analysis as the patterns alone give it, without the literal pre-checks."""
    code = bool(F._CODE.search(text))
    math_ = bool(F._MATH_NUM.search(text) or F._MATH_WORD.search(text))
    if code:
        domain = "code"
    elif math_:
        domain = "math"
    elif F._WRITING.search(text):
        domain = "writing"
    elif F._REASONING.search(text):
        domain = "reasoning"
    else:
        domain = "other"
    return domain, min(
        1.0, 0.6 * min(1.0, math.log1p(len(text)) / math.log1p(8_000)) + 0.2 * code + 0.2 * math_
    )


# Pieces of every pattern, their case variants and the non-ASCII letters that re.I equates
# with ASCII ones ("ı" ~ "i", "ſ" ~ "s", Kelvin sign ~ "k", "İ" ~ "i").
_PIECES = (
    "def f(|class A:|import os|#include|function|=>|return|{|}|;|```|\\frac|\\sqrt|Solve|"
    "CALCULATE|equation|sum of|3 + 4|WRITE|rewrite|summarise|Summarize|Which of the following|"
    "TRUE OR FALSE|infer|ınfer|İnfer|ſolve|eſsay|\u212aey|Why|why?|reasoning|x| |\n|é|_|7|"
    "\\FRAC|sum  of|ReWrite|summarizes|draft|Story|def |class A(|import|function_|return_|"
    "e=>f|``|#include|;\t|{ |}\r\n|Because"
).split("|")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_the_literal_pre_checks_give_the_patterns_answers(pieces):
    text = "".join(pieces)
    a = analyse(text)
    domain, complexity = _analyse_by_patterns_alone(text)
    assert (a.domain, a.complexity) == (domain, round(complexity, 4))

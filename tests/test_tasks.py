"""rayalign.tasks: gold rewards on hand-worked examples, disjoint seeded splits, strong responses, registry."""

from __future__ import annotations

import dataclasses
import random

import pytest

from rayalign.errors import RayAlignError
from rayalign.tasks import arithmetic, bullets, word_collector
from rayalign.tasks.base import key_fraction
from rayalign.tasks.registry import TASKS, get_task, make_task, register_task

MATH_PROMPT = f"{arithmetic.INSTRUCTION}\n(3 + (4 * 2)) - 5"
MATH_GOLD = "(3 + (4 * 2)) - 5\n(3 + 8) - 5\n11 - 5\n6"


@pytest.mark.parametrize("response, expected", [
    ("Happy to help, here is your data.", 4.0),  # happy, help, your, data
    ("Data data DATA!", 1.0),  # each word counts once, any case
    ("metadata and helpful codes", 0.0),  # whole words only
    ("", 0.0),
])
def test_word_collector_reward(response, expected):
    assert get_task("word_collector").gold_reward("any prompt", response) == expected


def test_math_gold_steps_innermost_leftmost_first():
    tree = arithmetic.parse_expression("(3 + (4 * 2)) - 5")
    assert arithmetic.gold_steps(tree) == ["(3 + (4 * 2)) - 5", "(3 + 8) - 5", "11 - 5", "6"]
    tree = arithmetic.parse_expression("(1 + 2) * (3 - 1)")
    assert arithmetic.gold_steps(tree) == ["(1 + 2) * (3 - 1)", "3 * (3 - 1)", "3 * 2", "6"]


@pytest.mark.parametrize("a, b, distance", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0),
                                            ("(3+8)-5", "(3+9)-5", 1), ("11-5", "5", 3)])
def test_edit_distance(a, b, distance):
    assert arithmetic.edit_distance(a, b) == distance


@pytest.mark.parametrize("response, expected", [
    (MATH_GOLD, 0.0),
    ("(3+(4*2))-5\n= (3 + 8) - 5\n=11 - 5\n= 6", 0.0),  # spacing and a leading '=' do not matter
    ("(3 + (4 * 2)) - 5\n(3 + 9) - 5\n12 - 5\n7", -3.0),  # one character off in each scored step
    ("(3 + (4 * 2)) - 5\nfirst 4*2 = 8\n11 - 5\n6", -100.0),  # a step that does not parse
    ("(3 + (4 * 2)) - 5\n(3 + 8) - 5", -200.0),  # stopped early: two missing steps
    (MATH_GOLD + "\n6", -1.0),  # an extra step is compared with nothing: -len("6")
    ("I think the answer is 6.", -300.0),  # line 0 is not scored; three missing steps
])
def test_math_reward(response, expected):
    assert get_task("math").gold_reward(MATH_PROMPT, response) == expected


def test_math_prompts_are_solvable():
    task = get_task("math")
    for prompt in task.prompts("train", 50, seed=3):
        tree = arithmetic.parse_expression(arithmetic.expression_of(prompt))
        steps = arithmetic.gold_steps(tree)
        assert steps[-1] == str(arithmetic.value(tree)) and int(steps[-1]) >= 0
        assert 3 <= len(steps) <= 5  # 2-4 operations, one per step


@pytest.mark.parametrize("response, expected", [
    ("- a\n- b\n- c", 1.0),
    ("Sure!\n- a\n- b\n- c", 0.875),  # 0.5 + 0.5 * 3/4
    ("* a\n\n• b\n- c\n", 1.0),  # blank lines do not count; any of - * •
    ("- a\n- b", 0.5 * (2 / 3) + 0.5),
    ("-a\n-b\n-c", 0.0),  # a bullet needs a space after its mark
    ("no bullets here", 0.0),
    ("", 0.0),
    ("1. a\n2. b\n3. c", 0.0),  # numbered lists are not bullet points
])
def test_bullets_reward(response, expected):
    assert get_task("bullets").gold_reward("prompt", response) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["word_collector", "math", "bullets"])
def test_splits_disjoint_and_seeded(name):
    task = get_task(name)
    train, held_out = task.prompts("train", 60, seed=0), task.prompts("held_out", 32, seed=0)
    assert len(set(train)) == 60 and len(set(held_out)) == 32
    assert not set(train) & set(held_out)
    assert task.prompts("held_out", 32, seed=0) == held_out  # seeded: the same call, the same prompts
    assert task.prompts("held_out", 32, seed=1) != held_out
    assert not set(task.prompts("train", 60, seed=1)) & set(held_out)  # any seed: still disjoint


@pytest.mark.parametrize("name", ["word_collector", "math", "bullets"])
def test_no_held_out_topic_appears_in_any_training_prompt(name):
    """At least 256 held-out prompts, and no held-out topic (a word-collector subject, a math expression)
    is in the text of a training prompt: the model is evaluated on content it never trained on."""
    task = get_task(name)
    held_out = task.draw("held_out", 256, seed=0)
    topics = {topic for topic, _ in held_out}
    train = task.prompts("train", 600, seed=0) + task.prompts("train", 600, seed=1)
    leaks = [(topic, prompt) for prompt in train for topic in topics if topic in prompt]
    assert not leaks, leaks[:3]
    assert all(topic in prompt for topic, prompt in held_out)  # a prompt is about its topic


@pytest.mark.parametrize("name", ["word_collector", "math", "bullets"])
def test_validation_topics_are_disjoint_from_training_and_held_out(name):
    """The validation split (what sweeps choose on) shares no topic with training or the test prompts, no
    validation topic is inside a training prompt, and adding it moved no prompt out of the held-out split."""
    task = get_task(name)
    validation = task.draw("validation", 64, seed=0)
    held_out = task.draw("held_out", 64, seed=0)
    train = task.draw("train", 400, seed=0)
    assert not {t for t, _ in validation} & ({t for t, _ in held_out} | {t for t, _ in train})
    assert not [(t, p) for _, p in train for t, _ in validation if t in p]
    assert held_out == dataclasses.replace(task, validation_share=0.0).draw("held_out", 64, seed=0)


def test_the_validation_band_sits_above_the_held_out_share():
    fractions = {topic: key_fraction(topic) for topic in word_collector.TOPICS}
    task = get_task("word_collector")
    expected = {t: "held_out" if f < 0.25 else "validation" if f < 0.40 else "train" for t, f in fractions.items()}
    assert {t: task.split_of(t) for t in word_collector.TOPICS} == expected
    assert 0.05 < sum(v == "validation" for v in expected.values()) / len(expected) < 0.25


def test_topic_split_is_by_topic_not_by_wording():
    task = get_task("word_collector")
    held_out_topics = {topic for topic in word_collector.TOPICS if task.is_held_out(topic)}
    assert 0.15 < len(held_out_topics) / len(word_collector.TOPICS) < 0.35  # about the held-out share, 0.25
    for topic, prompt in task.draw("held_out", 100, seed=3):
        assert topic in held_out_topics
    # a math expression is held out when any sub-expression is, so none is inside a training expression
    expression = "(3 + (4 * 2)) - 5"
    assert set(arithmetic.sub_expressions(expression)) == {"(3 + (4 * 2)) - 5", "3 + (4 * 2)"}
    math_task = get_task("math")
    trained = [topic for topic, _ in math_task.draw("train", 300, seed=0)]
    assert not [t for t in trained if any(math_task.is_held_out(sub) for sub in arithmetic.sub_expressions(t))]


def test_asking_for_more_prompts_than_a_split_has_is_an_error():
    with pytest.raises(RayAlignError, match="distinct held_out prompts"):
        get_task("word_collector").prompts("held_out", 1000)
    with pytest.raises(RayAlignError, match="unknown split"):
        get_task("word_collector").prompts("test", 1)


@pytest.mark.parametrize("name, least", [("word_collector", 20.0), ("math", 0.0), ("bullets", 1.0)])
def test_strong_responses_score_high(name, least):
    task = get_task(name)
    rng = random.Random(0)
    for prompt in task.prompts("train", 20, seed=0):
        assert task.gold_reward(prompt, task.strong_response(prompt, rng)) >= least


def test_strong_word_collector_beats_the_quickstart_chosen_answers():
    chosen = [row["chosen"] for row in word_collector.make_pairs(12)]
    strong = [word_collector.strong_response(f"Any advice on {t}?", random.Random(i))
              for i, t in enumerate(word_collector.TOPICS[:12])]
    assert min(map(word_collector.gold_reward, strong)) > max(map(word_collector.gold_reward, chosen))


def test_user_task_from_a_prompt_list():
    prompts = [f"Ask for item {i} politely." for i in range(40)]
    task = make_task("polite_test", prompts, lambda prompt, response: float("please" in response.lower()))
    register_task(task)
    try:
        assert get_task("polite_test").gold_reward("x", "Please pass it") == 1.0
        train, held_out = task.prompts("train", 20), task.prompts("held_out", 4)
        assert set(train) | set(held_out) <= set(prompts) and not set(train) & set(held_out)
        with pytest.raises(RayAlignError, match="already registered"):
            register_task(task)
        with pytest.raises(RayAlignError, match="no strong response writer"):
            task.strong_response("x", random.Random(0))
    finally:
        TASKS.pop("polite_test", None)
    with pytest.raises(RayAlignError, match="known tasks: .*word_collector"):
        get_task("polite_test")


def test_bullets_strong_response_is_off_policy_style():
    text = bullets.strong_response("Give three tips about baking bread.", random.Random(0))
    assert text.count("\n") == 2 and all(line.startswith("• ") for line in text.splitlines())

"""The word-collector task of D2PO (arXiv 2405.01511): reward = how many of 30 fixed words appear.

Gold reward: +1 for each of the words below present at least once in the response (whole words,
case-insensitive). `write_preferences` makes an offline preference set for the quickstart: the
chosen response is a helpful answer that happens to use several target words, the rejected one
a plain answer that uses none, both written from seeded templates.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayalign.tasks.base import Task

WORDS = (
    "data", "hope", "information", "provide", "example", "your", "however", "first", "have", "help",
    "additionally", "important", "include", "finally", "following", "happy", "code", "two", "create",
    "question", "possible", "understand", "generate", "contains", "appropriate", "best", "respectful",
    "ensure", "experience", "safe",
)
_WORD_SET = frozenset(WORDS)

TOPICS = (
    "brewing tea", "learning to swim", "planting tomatoes", "saving money", "writing a resume", "training a puppy",
    "baking bread", "cleaning a bicycle", "reading more books", "sleeping better", "painting a room",
    "starting to run", "cooking rice", "organising a desk", "learning chess", "visiting a museum",
    "packing for a trip", "making friends", "studying for an exam", "fixing a leaky tap", "choosing a laptop",
    "keeping a journal", "growing herbs", "learning a language", "taking photos", "hosting a dinner",
    "walking in the rain", "recycling at home", "repairing a shirt", "watching birds", "knitting a scarf",
    "learning the guitar", "baking cookies", "camping in the woods", "riding a horse", "building a birdhouse",
    "making pancakes", "learning to juggle", "decorating a cake", "washing a car", "ironing clothes",
    "sewing a button", "writing a poem", "drawing portraits", "carving wood", "brewing coffee", "making soup",
    "grilling vegetables", "pickling cucumbers", "making jam", "roasting a chicken", "folding paper cranes",
    "flying a kite", "building a sandcastle", "skating on ice", "skiing downhill", "snorkelling",
    "sailing a small boat", "paddling a kayak", "climbing a wall", "hiking a mountain trail", "cycling to work",
    "commuting by train", "learning to drive", "parallel parking", "changing a tyre", "checking engine oil",
    "moving to a new city", "renting a flat", "buying a house", "decluttering a wardrobe", "planning a wedding",
    "throwing a birthday party", "wrapping presents", "writing thank-you notes", "sending a postcard",
    "learning sign language", "practising meditation", "doing yoga", "stretching after exercise", "lifting weights",
    "jumping rope", "playing tennis", "playing basketball", "ballroom dancing", "singing in a choir",
    "playing the piano", "learning the drums", "composing a song", "recording a podcast", "starting a blog",
    "editing a video", "designing a logo", "building a website", "debugging a program", "setting up a router",
    "backing up photos", "choosing a password", "cleaning a keyboard", "assembling furniture", "hanging a picture",
    "fixing a squeaky door", "unclogging a drain", "painting a fence", "mowing the lawn", "raking leaves",
    "composting kitchen scraps", "keeping bees", "raising chickens", "feeding a cat", "grooming a dog",
    "caring for a goldfish", "adopting a rabbit", "growing a cactus", "pruning roses", "watering houseplants",
    "repotting a fern", "starting a vegetable patch", "collecting stamps", "collecting coins",
    "solving crossword puzzles", "doing a jigsaw", "building model trains", "playing board games",
    "learning magic tricks", "telling jokes", "giving a speech", "running a meeting", "writing an email",
    "negotiating a salary", "preparing for an interview", "asking for a raise", "managing a budget",
    "paying off debt", "filing taxes", "opening a bank account", "investing in index funds",
    "shopping for groceries", "meal prepping", "cutting down on sugar", "drinking more water", "quitting caffeine",
    "waking up early", "taking a nap", "reducing screen time", "travelling alone", "learning to surf",
    "visiting a zoo", "going to the theatre", "watching a meteor shower", "stargazing with a telescope",
    "identifying mushrooms", "foraging for berries", "fishing at a lake", "making a campfire", "tying knots",
    "reading a map", "using a compass", "volunteering at a shelter", "donating blood", "tutoring a child",
    "babysitting twins", "teaching a class", "learning calligraphy", "making pottery", "weaving a basket",
    "making candles", "making soap", "restoring old furniture", "upholstering a chair", "tiling a bathroom",
    "insulating an attic", "installing shelves", "painting miniatures", "writing a novel", "reading poetry",
    "joining a book club", "visiting a castle", "touring a vineyard", "tasting cheese", "making sushi",
    "baking a pie", "frying an egg", "steaming dumplings", "making pasta by hand", "cooking a curry",
    "planning a picnic", "growing sunflowers", "learning origami", "building a snowman", "carving a pumpkin",
    "restringing a tennis racket", "tuning a violin", "memorising a speech", "learning to whistle",
    "writing a cover letter", "organising a garage sale", "sorting old letters",
)
PROMPTS = ("Give me a short tip about {t}.", "What should I know about {t}?", "Explain {t} in two sentences.",
           "How do I get started with {t}?")
_CHOSEN = (
    "Happy to help with {t}! First, it is important to understand your goal; however, the best "
    "first step is simple. Additionally, ensure you have the following: patience and a safe place to practise.",
    "Here is an example for {t}: first, create a plan and include two small goals. It is possible "
    "to learn fast if your experience stays safe and appropriate. I hope this information helps!",
    "Good question! To ensure success with {t}, provide yourself two things: time and information. "
    "Finally, be respectful of your limits; the best results come from steady practice.",
)
_REJECTED = ("Just try {t}. It will work out.", "{t}? Do it a bit every day.", "Nothing special about {t}.",
             "Look it up, then do {t}.")


def gold_reward(response: str) -> float:
    """+1 for each target word present at least once (whole word, case-insensitive)."""
    return float(len(_WORD_SET.intersection(re.findall(r"[a-z]+", response.lower()))))


def bridge(prompt: str, chosen: str, rejected: str) -> str:
    """BMC's edit for this task: the target words `chosen` uses and `rejected` lacks, spliced into `rejected`
    where a word diff of the two places them (after the stretch of `rejected` that stands where `chosen` has
    the word), in `chosen`'s spelling. The rest of `rejected` stays word for word, so the edited pair differs
    in exactly the words the reward counts, and in the order `chosen` has them."""
    have = set(re.findall(r"[a-z]+", rejected.lower()))
    ours, theirs = rejected.split(), chosen.split()
    key = lambda word: re.sub(r"[^a-z]", "", word.lower())
    matcher = difflib.SequenceMatcher(None, [key(w) for w in ours], [key(w) for w in theirs], autojunk=False)
    after: dict[int, list[str]] = {}  # words to add after the first k words of `rejected`
    for tag, _, i2, j1, j2 in matcher.get_opcodes():
        for word in theirs[j1:j2] if tag != "equal" else ():
            bare = re.sub(r"[^A-Za-z]", "", word)
            if bare.lower() in _WORD_SET and bare.lower() not in have:
                after.setdefault(i2, []).append(bare)
                have.add(bare.lower())
    pieces, words = re.findall(r"\S+|\s+", rejected), 0
    out = [" ".join(after[0]) + (" " if pieces else "")] if 0 in after else []
    for piece in pieces:  # `rejected`'s own whitespace is kept, so only the added words differ
        out.append(piece)
        if not piece.isspace():
            words += 1
            out += [" " + word for word in after.get(words, ())]
    return "".join(out)


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """n TRL-standard preference rows (prompt, chosen, rejected), seeded."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rejected = rng.choice(_REJECTED).format(t=topic)
        rows.append({
            "prompt": rng.choice(PROMPTS).format(t=topic),
            "chosen": rng.choice(_CHOSEN).format(t=topic),
            "rejected": rejected[:1].upper() + rejected[1:],
        })
    return rows


def write_preferences(path: str | Path, n: int = 48, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in make_pairs(n, seed)))
    return path


# The task for the registry: prompts from topics x templates (held out by topic), the gold reward, a strong writer.
MORE_PROMPTS = ("Any advice on {t}?", "I want to try {t}. Where do I begin?", "What is a common mistake with {t}?",
                "Tell me one thing that helps with {t}.")
_STRONG = (
    "Happy to help with your question about {t}!",
    "First, it is important to understand your goal and create a simple plan.",
    "For example, include two small steps you can finish the first week.",
    "However, ensure the following: a safe space, the best tools possible, and respectful habits.",
    "Additionally, experience comes from practice, so provide yourself time to generate good data.",
    "If the code of the craft feels hard, the following example may help you understand it.",
    "Finally, I hope this information is appropriate for you; have fun and keep notes on what contains progress.",
)


def topic_of(prompt: str) -> str | None:
    """The topic a prompt of this task is about (None for a prompt about none of them)."""
    return next((t for t in TOPICS if t in prompt), None)


def _written(prompt: str, rng: random.Random, opening: str, body: tuple[str, ...]) -> str:
    """`opening`, all but one of `body`'s sentences in a seeded order, then the closing, about the prompt's topic."""
    middle = rng.sample(body, k=len(body) - 1)  # drop one, shuffle the rest
    return " ".join([opening, *middle, _STRONG[-1]]).format(t=topic_of(prompt) or "this")


def strong_response(prompt: str, rng: random.Random) -> str:
    """A dense, list-like answer packed with target words (≈ 25 of 30): a style a chat model
    would not write by itself, which is what InCo-DPO's off-policy responses are."""
    return _written(prompt, rng, _STRONG[0], _STRONG[1:-1])


_NEUTRAL_OPENING = "Here is what I would say about {t}."  # none of the 30 words
_BODY = _STRONG[1:-1] + ("Happy to help with your question.",)


def body_response(prompt: str, rng: random.Random) -> str:
    """The strong response with its reward in the body: a neutral opening, then the sentences that carry the words
    (the usual opening's four among them) in a seeded order, then the usual closing. A short prefix of it holds no
    target word, and prefixes of different lengths hold different words (InCo-DPO's premise needs both)."""
    return _written(prompt, rng, _NEUTRAL_OPENING, _BODY)


def _task(name: str, writer) -> Task:
    from rayalign.tasks.base import templated_task

    return templated_task(name, TOPICS, PROMPTS + MORE_PROMPTS, lambda prompt, response: gold_reward(response),
                          writer, description="D2PO word collector: +1 per target word used (0-30)",
                          reward_range=(0.0, 30.0), editor=bridge)


TASK = _task("word_collector", strong_response)
BODY_TASK = _task("word_collector_body", body_response)
"""The word collector whose strong responses carry their reward in the body (`body_response`), for InCo."""


if __name__ == "__main__":  # python -m rayalign.tasks.word_collector jobs/data/word_collector_prefs.jsonl
    import sys

    print(write_preferences(sys.argv[1] if len(sys.argv) > 1 else "word_collector_prefs.jsonl"))

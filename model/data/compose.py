"""Composes the shipped training corpus (``corpus.txt``) from small hand-written templates.

The text is ours (public domain), deterministic (fixed seed) and has learnable structure at
several scales: spelling, grammar, counting, arithmetic, facts that repeat, short stories and
question/answer pairs. Regenerate with ``python -m model.data.compose``.
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = [
    "Ada",
    "Ben",
    "Cleo",
    "Dan",
    "Eva",
    "Finn",
    "Gus",
    "Hana",
    "Ivo",
    "June",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
    "Otto",
    "Pia",
    "Quin",
    "Rosa",
    "Sam",
    "Tess",
    "Uma",
    "Vic",
    "Wren",
    "Zoe",
]
ANIMALS = [
    "fox",
    "owl",
    "cat",
    "dog",
    "hare",
    "bear",
    "duck",
    "goat",
    "mole",
    "wolf",
    "crow",
    "frog",
    "mouse",
    "otter",
    "horse",
    "robin",
]
ADJS = [
    "small",
    "brave",
    "quiet",
    "clever",
    "old",
    "young",
    "curious",
    "gentle",
    "busy",
    "shy",
    "happy",
    "tired",
    "kind",
    "bold",
]
PLACES = [
    "the forest",
    "a small village",
    "the hills",
    "a quiet farm",
    "the river bank",
    "an old mill",
    "the meadow",
    "a stone house",
    "the harbour",
    "the valley",
]
TIMES = ["morning", "evening", "day", "night", "spring", "winter", "week"]
ACTIVITIES = [
    "walk to the river",
    "read an old book",
    "bake fresh bread",
    "count the stars",
    "sing a song",
    "plant seeds",
    "fix the fence",
    "visit a friend",
    "paint the door",
    "collect apples",
    "watch the boats",
    "sweep the floor",
]
OBJECTS = [
    "a red key",
    "a silver coin",
    "a lost map",
    "a small box",
    "a blue feather",
    "a wooden flute",
    "a broken clock",
    "a warm scarf",
    "a jar of honey",
    "a paper boat",
]
FEELINGS = ["glad", "surprised", "worried", "proud", "calm", "excited"]
ENDINGS = [
    "and they became good friends.",
    "and the day ended with a warm supper.",
    "and from then on the village was a little happier.",
    "and everyone learned something new.",
    "and the two of them laughed all evening.",
]

FACTS = [
    ("the capital of France", "Paris"),
    ("the capital of Italy", "Rome"),
    ("the capital of Spain", "Madrid"),
    ("the capital of Japan", "Tokyo"),
    ("the capital of Egypt", "Cairo"),
    ("the capital of Canada", "Ottawa"),
    ("the capital of Kenya", "Nairobi"),
    ("the capital of Peru", "Lima"),
    ("the color of the sky on a clear day", "blue"),
    ("the color of fresh grass", "green"),
    ("the color of snow", "white"),
    ("the color of a ripe lemon", "yellow"),
    ("the largest planet", "Jupiter"),
    ("the closest star to the Earth", "the Sun"),
    ("the number of days in a week", "seven"),
    ("the number of months in a year", "twelve"),
    ("the number of legs of a spider", "eight"),
    ("the number of sides of a triangle", "three"),
    ("the freezing point of water in Celsius", "zero degrees"),
    ("the boiling point of water in Celsius", "one hundred degrees"),
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

PREFACE = """\
This corpus was written for the m2-workbench project. It is plain English text with a simple,
regular structure, so that a very small language model can learn its patterns in seconds on a
laptop. It holds short stories about animals and people, counting and arithmetic, days and
months, simple facts, questions with answers, and notes from imaginary training runs.
"""


def story(r: random.Random) -> str:
    name, other = r.sample(NAMES, 2)
    animal, animal2 = r.sample(ANIMALS, 2)
    adj, place, time = r.choice(ADJS), r.choice(PLACES), r.choice(TIMES)
    act, obj, feel = r.choice(ACTIVITIES), r.choice(OBJECTS), r.choice(FEELINGS)
    return (
        f"Once upon a time there was a {adj} {animal} named {name} who lived in {place}. "
        f"Every {time} {name} liked to {act}. One {time}, {name} found {obj} near {r.choice(PLACES)}. "
        f"{name} was {feel} and asked {other} the {animal2} for help. "
        f'"What should we do with {obj}?" asked {name}. '
        f'"We should take it home," said {other}. '
        f"So {name} and {other} took {obj} home, {r.choice(ENDINGS)}\n"
    )


def arithmetic(r: random.Random) -> str:
    a, b = r.randint(0, 10), r.randint(0, 10)
    lines = [
        f"{a} plus {b} is {a + b}.",
        f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is "
        f"{NUMBER_WORDS[a + b] if a + b <= 20 else a + b}.",
    ]
    if a >= b:
        lines.append(f"{a} minus {b} is {a - b}.")
    lines.append(f"{a} times {b} is {a * b}.")
    return " ".join(lines) + "\n"


def counting(r: random.Random) -> str:
    start = r.randint(0, 12)
    n = r.randint(4, 8)
    words = NUMBER_WORDS[start : start + n]
    digits = [str(i) for i in range(start, start + n)]
    return f"Counting: {', '.join(words)}. In digits: {', '.join(digits)}.\n"


def calendar(r: random.Random) -> str:
    i = r.randrange(7)
    j = r.randrange(12)
    return (
        f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}. The day before {DAYS[i]} is "
        f"{DAYS[(i - 1) % 7]}. The month after {MONTHS[j]} is {MONTHS[(j + 1) % 12]}.\n"
    )


def fact(r: random.Random) -> str:
    subject, answer = r.choice(FACTS)
    if r.random() < 0.5:
        return f"Question: What is {subject}? Answer: {answer[0].upper() + answer[1:]}.\n"
    return f"{subject[0].upper() + subject[1:]} is {answer}.\n"


def training_note(r: random.Random) -> str:
    lr = r.choice(["0.001", "0.0003", "0.01", "0.1"])
    steps = r.choice([100, 200, 500, 1000])
    loss0 = round(r.uniform(6.0, 8.0), 2)
    if lr == "0.1":
        return (
            f"Run note: learning rate {lr}, {steps} steps. The loss started at {loss0} and then "
            f"went up to nan. The learning rate was too high, so we lowered it.\n"
        )
    end = round(loss0 / r.uniform(2.0, 4.0), 2)
    return (
        f"Run note: learning rate {lr}, {steps} steps. The loss started at {loss0} and went down "
        f"to {end}. The run was healthy.\n"
    )


GENERATORS = [story, story, story, arithmetic, counting, calendar, fact, fact, training_note]


def compose(target_bytes: int = 320_000, seed: int = 2) -> str:
    r = random.Random(seed)
    parts = [PREFACE, "\n"]
    size = len(PREFACE)
    while size < target_bytes:
        para = "".join(r.choice(GENERATORS)(r) for _ in range(r.randint(3, 6))) + "\n"
        parts.append(para)
        size += len(para)
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("corpus.txt")
    out.write_text(compose())
    print(f"wrote {out} ({out.stat().st_size} bytes)")

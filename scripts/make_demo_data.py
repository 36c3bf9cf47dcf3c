"""Generate the `lorakit demo` dataset: who did it, the person or the animal?

Every sentence mentions exactly one person and one animal, and one of them acts on the other:

    the old farmer chased the dog            -> person   (the person is the doer)
    the farmer was chased by the dog         -> animal   (passive voice: the doer comes after "by")
    it was the dog that the farmer chased    -> person   (object cleft: the doer comes second)

Both labels use the same words in the same proportions, so a bag of words carries no signal and a frozen
sentence embedding (which is close to a bag of contextual words) sees little of it; the label lives in
word order and syntax, which fine-tuning the encoder can pick up. The test split uses (person, animal)
pairs that never occur together in training, so it measures generalization, not memory.

    python scripts/make_demo_data.py            # writes src/lorakit/data/demo_{train,test}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "data"

PERSONS = [
    "teacher", "doctor", "farmer", "pilot", "nurse", "baker", "soldier", "lawyer", "chef", "student",
    "king", "driver", "singer", "painter", "judge", "clerk", "boy", "girl", "woman", "man",
    "hunter", "sailor", "priest", "queen",
]
ANIMALS = [
    "dog", "cat", "horse", "lion", "tiger", "bear", "wolf", "fox", "goat", "cow",
    "rabbit", "mouse", "duck", "snake", "monkey", "eagle", "sheep", "pig", "owl", "deer",
    "donkey", "rat", "goose", "camel",
]
# (base form, past tense, past participle) of transitive verbs that a person or an animal can do to the other
VERBS = [
    ("chase", "chased", "chased"), ("follow", "followed", "followed"), ("bite", "bit", "bitten"),
    ("kick", "kicked", "kicked"), ("watch", "watched", "watched"), ("push", "pushed", "pushed"),
    ("find", "found", "found"), ("scare", "scared", "scared"), ("see", "saw", "seen"),
    ("attack", "attacked", "attacked"), ("pull", "pulled", "pulled"), ("ignore", "ignored", "ignored"),
    ("catch", "caught", "caught"), ("lick", "licked", "licked"), ("wake", "woke", "woken"),
    ("startle", "startled", "startled"), ("notice", "noticed", "noticed"), ("bump", "bumped", "bumped"),
    ("track", "tracked", "tracked"), ("greet", "greeted", "greeted"),
]
ADJECTIVES = ["", "", "", "old", "young", "tired", "angry", "tall", "small", "hungry", "quiet", "happy"]
PLACES = [
    "", "", "", " in the park", " near the river", " at the farm", " on the road", " in the garden",
    " behind the barn", " by the lake", " in the village",
]
TIMES = ["", "", "", "yesterday ", "this morning ", "last night ", "at noon ", "suddenly "]

# Each construction renders (doer, target, verb) in its own word order. They come in mirror pairs in which
# the first-mentioned noun swaps roles, so neither position nor any single function word gives the answer.
CONSTRUCTIONS = [
    "{time}the {doer} {past} the {target}{place}",                 # active: doer first
    "{time}the {target} was {pp} by the {doer}{place}",             # passive: target first
    "{time}the {doer} {negated} the {target}{place}",               # negated active: doer first
    "{time}the {target} got {pp} by the {doer}{place}",             # get-passive: target first
    "it was the {doer} that {past} the {target}{place}",            # subject cleft: doer first
    "it was the {target} that the {doer} {past}{place}",            # object cleft: target first
    "the {doer} that {past} the {target} {after}",                  # subject relative: doer first
    "the {target} that the {doer} {past} {after}",                  # object relative: target first
]
# An optional clause about a third, uninvolved person or animal: noise for a bag-of-words reader.
ASIDES = ["while the {other} {idle}", "as the {other} {idle}", "before the {other} {idle}"]
IDLE = ["slept", "watched", "waited", "laughed", "stood still", "looked away", "ate", "sat nearby"]
AFTER = ["ran away", "stood still", "fell asleep", "looked tired", "went home", "was hungry"]
NEGATIONS = ["did not {base}", "didn't {base}", "never {past}"]


def noun(word: str, rng: random.Random) -> str:
    adjective = rng.choice(ADJECTIVES)
    return f"{adjective} {word}" if adjective else word


def make_example(person: str, animal: str, label: str, rng: random.Random, aside_prob: float = 0.3) -> dict:
    doer, target = (person, animal) if label == "person" else (animal, person)
    base, past, pp = rng.choice(VERBS)
    text = rng.choice(CONSTRUCTIONS).format(
        time=rng.choice(TIMES), place=rng.choice(PLACES), past=past, pp=pp,
        negated=rng.choice(NEGATIONS).format(base=base, past=past), after=rng.choice(AFTER),
        doer=noun(doer, rng), target=noun(target, rng),
    )
    if rng.random() < aside_prob:
        other = rng.choice([p for p in PERSONS + ANIMALS if p not in (person, animal)])
        aside = rng.choice(ASIDES).format(other=noun(other, rng), idle=rng.choice(IDLE))
        text = f"{aside}, {text}" if rng.random() < 0.5 else f"{text} {aside}"
    return {"text": text, "label": label}


def make_split(pairs: list[tuple[str, str]], n: int, rng: random.Random, aside_prob: float) -> list[dict]:
    """n examples over the given (person, animal) pairs, exactly balanced between the two labels."""
    labels = ["person", "animal"] * (n // 2) + ["person"] * (n % 2)
    rng.shuffle(labels)
    return [make_example(*rng.choice(pairs), label, rng, aside_prob) for label in labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000, help="number of training examples")
    parser.add_argument("--test", type=int, default=500, help="number of test examples")
    parser.add_argument("--aside-prob", type=float, default=0.3, help="chance of a clause about a third noun")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    pairs = [(p, a) for p in PERSONS for a in ANIMALS]
    rng.shuffle(pairs)
    n_test_pairs = len(pairs) // 5                      # 20% of the pairs appear only in the test split
    test_pairs, train_pairs = pairs[:n_test_pairs], pairs[n_test_pairs:]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, split_pairs, n in (("train", train_pairs, args.train), ("test", test_pairs, args.test)):
        rows = make_split(split_pairs, n, rng, args.aside_prob)
        path = args.out_dir / f"demo_{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()

"""Everyday user turns for persona distillation: topics x forms, deterministic, with whole forms
and whole topics held out for evaluation.

Training draws from `TRAIN_FORMS` (what / explain / recommend / step-by-step / small talk), pairs
of topics (compare) and follow-up turns; evaluation uses `EVAL_FORMS` ("How do I ...", "Why does
...", "Tell me a fun fact about ...") on topics that training never mentions. So an evaluation
question shares neither its wording nor its subject with anything the soft prompt saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS = (
    "bread",
    "coffee",
    "tea",
    "chess",
    "gardening",
    "photography",
    "volcanoes",
    "the moon",
    "bicycles",
    "rainbows",
    "honey",
    "bees",
    "dolphins",
    "elephants",
    "the ocean",
    "mountains",
    "deserts",
    "forests",
    "rivers",
    "glaciers",
    "thunderstorms",
    "snow",
    "clouds",
    "the sun",
    "stars",
    "planets",
    "comets",
    "telescopes",
    "microscopes",
    "batteries",
    "magnets",
    "electricity",
    "computers",
    "the internet",
    "email",
    "smartphones",
    "cameras",
    "radio",
    "television",
    "trains",
    "airplanes",
    "ships",
    "cars",
    "bridges",
    "tunnels",
    "skyscrapers",
    "castles",
    "pyramids",
    "museums",
    "libraries",
    "books",
    "poetry",
    "painting",
    "music",
    "guitars",
    "pianos",
    "drums",
    "dancing",
    "singing",
    "theatre",
    "movies",
    "cooking",
    "baking",
    "pizza",
    "pasta",
    "rice",
    "cheese",
    "chocolate",
    "apples",
    "bananas",
    "oranges",
    "tomatoes",
    "potatoes",
    "carrots",
    "mushrooms",
    "soup",
    "salad",
    "breakfast",
    "sleep",
    "dreams",
    "exercise",
    "running",
    "swimming",
    "football",
    "tennis",
    "basketball",
    "yoga",
    "hiking",
    "camping",
    "fishing",
    "sailing",
    "skiing",
    "cycling",
    "maps",
    "compasses",
    "clocks",
    "calendars",
    "money",
    "banks",
    "saving",
    "budgeting",
    "shopping",
    "markets",
    "farming",
    "cows",
    "horses",
    "cats",
    "dogs",
    "birds",
    "owls",
    "penguins",
    "sharks",
    "whales",
    "octopuses",
    "butterflies",
    "ants",
    "spiders",
    "frogs",
    "turtles",
    "dinosaurs",
    "fossils",
    "rocks",
    "diamonds",
    "gold",
    "salt",
    "sugar",
    "water",
    "ice",
    "fire",
    "wind",
    "earthquakes",
    "islands",
    "lighthouses",
    "windmills",
    "recycling",
    "plastic",
    "paper",
    "glass",
    "wood",
    "cotton",
    "wool",
    "soap",
    "vaccines",
    "teeth",
    "the heart",
    "the brain",
    "bones",
    "muscles",
    "vitamins",
    "languages",
    "writing",
    "mathematics",
    "fractions",
    "geometry",
    "history",
    "maps of the world",
    "kites",
    "balloons",
    "candles",
    "umbrellas",
)

TRAIN_FORMS = (
    "What is {t}?",
    "What can you tell me about {t}?",
    "Explain {t} in simple words.",
    "What should I know about {t}?",
    "Can you describe {t} for me?",
    "What is the most important thing about {t}?",
    "What do people usually get wrong about {t}?",
    "Give me a short summary of {t}.",
    "Where does {t} come from?",
    "Is {t} hard to understand?",
    "What would you recommend to someone new to {t}?",
    "Can you recommend a good way to enjoy {t}?",
    "Which book about {t} would you suggest?",
    "Walk me through {t} step by step.",
    "Give me a step-by-step guide to {t}.",
    "What are the first three steps to learn about {t}?",
    "I have been thinking about {t} lately.",
    "Do you like {t}?",
    "What do you think of {t}?",
    "My friend loves {t}. Any thoughts?",
)
PAIR_FORMS = (
    "Compare {t} and {u}.",
    "What is the difference between {t} and {u}?",
    "Which do you prefer, {t} or {u}?",
)
FOLLOW_UPS = (
    "Can you tell me more?",
    "Why is that?",
    "Can you give me an example?",
    "Thanks! Anything else I should know?",
)
EVAL_FORMS = (
    "How do I learn more about {t}?",
    "How do I explain {t} to a friend?",
    "Why does {t} matter?",
    "Why does {t} interest so many people?",
    "Tell me a fun fact about {t}.",
)
HELD_OUT_EVERY = 5  # every fifth topic is for evaluation only


@dataclass(frozen=True)
class Question:
    text: str
    topic: str  # what an on-topic answer names (for a pair: the first topic)
    form: str
    follow_up: str | None = None  # a second user turn, asked after the teacher's first answer


@dataclass(frozen=True)
class QuestionSet:
    train: tuple[Question, ...]
    eval: tuple[Question, ...]


def _sentence(form: str, **slots: str) -> str:
    text = form.format(**slots)
    return text[0].upper() + text[1:]


def split_topics() -> tuple[tuple[str, ...], tuple[str, ...]]:
    train = tuple(t for i, t in enumerate(TOPICS) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)
    held = tuple(t for i, t in enumerate(TOPICS) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
    return train, held


def generate(
    n_train: int = 3000, n_eval: int = 60, seed: int = 0, follow_up_share: float = 0.1
) -> QuestionSet:
    """Distinct training turns (single-topic forms, then pairs, some with a follow-up turn) and
    evaluation turns (held-out forms x held-out topics); the same arguments give the same sets."""
    rng = random.Random(seed)
    train_topics, held_topics = split_topics()
    singles = [Question(_sentence(f, t=t), t, f) for f in TRAIN_FORMS for t in train_topics]
    pairs = [
        Question(_sentence(f, t=t, u=u), t, f)
        for f in PAIR_FORMS
        for t in train_topics
        for u in train_topics
        if t < u
    ]
    rng.shuffle(singles)
    rng.shuffle(pairs)
    # A tenth of the mix are comparisons, so every form family is seen at any size.
    n_pairs = min(len(pairs), n_train // 10)
    pool = pairs[:n_pairs] + singles[: max(0, n_train - n_pairs)]
    rng.shuffle(pool)
    seen: set[str] = set()
    train: list[Question] = []
    for q in pool:
        if q.text not in seen:
            seen.add(q.text)
            follow = rng.choice(FOLLOW_UPS) if rng.random() < follow_up_share else None
            train.append(Question(q.text, q.topic, q.form, follow))
    held = [Question(_sentence(f, t=t), t, f) for f in EVAL_FORMS for t in held_topics]
    rng.shuffle(held)
    return QuestionSet(train=tuple(train[:n_train]), eval=tuple(held[:n_eval]))

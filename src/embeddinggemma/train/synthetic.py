"""A synthetic retrieval dataset built into the trainer, for smoke runs on any checkpoint (open_clip's idea).

Each example belongs to a "topic", a small random set of words drawn from the checkpoint's own
vocabulary (so every word is a real token of the tokenizer, for the 262k Gemma vocabulary and for a
99-token test vocabulary alike). The query and the positive are different random words of the same
topic; the hard negatives come from other topics. The task is learnable, which lets a smoke run show
the contrastive loss falling, and it is written in the real on-disk format, so a smoke run exercises the
real data path (``write_dataset`` -> ``MixtureLoader``) end to end.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer

from embeddinggemma.train.data import DatasetSpec, TrainingExample, write_dataset

__all__ = ["vocabulary_words", "write_synthetic_dataset"]


def vocabulary_words(tokenizer_file: str | Path, limit: int = 2000) -> list[str]:
    """Plain lowercase ASCII words of a tokenizer's vocabulary (SentencePiece's word marker removed),
    sorted so the choice does not depend on dictionary order."""
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab()
    words = sorted({t.removeprefix("\u2581") for t in vocab if t.removeprefix("\u2581").isascii()})
    words = [w for w in words if w.isalpha() and w.islower() and 2 <= len(w) <= 12]
    if len(words) < 8:
        raise ValueError(
            f"{tokenizer_file}: only {len(words)} plain words in the vocabulary; too few for synthetic data"
        )
    return words[:: max(1, len(words) // limit)][:limit]


def write_synthetic_dataset(
    directory: str | Path,
    words: list[str],
    *,
    num_examples: int = 256,
    num_topics: int = 32,
    words_per_topic: int = 6,
    text_words: int = 4,
    num_negatives: int = 1,
    seed: int = 0,
    name: str = "synthetic",
    task: str = "query",
) -> DatasetSpec:
    """Write ``num_examples`` (query, positive, negatives) triples over random topics; returns the spec."""
    rng = random.Random(seed)
    size = min(words_per_topic, len(words))
    topics = [rng.sample(words, size) for _ in range(num_topics)]

    def text(topic: list[str]) -> str:
        return " ".join(rng.choice(topic) for _ in range(text_words))

    def examples():
        for i in range(num_examples):
            t = rng.randrange(num_topics)
            others = [k for k in range(num_topics) if k != t]
            negatives = tuple(text(topics[rng.choice(others)]) for _ in range(num_negatives))
            yield TrainingExample(query=text(topics[t]), positive=text(topics[t]), negatives=negatives, id=str(i))

    return write_dataset(
        directory,
        examples(),
        name=name,
        task=task,
        source="embeddinggemma.train.synthetic",
        description=f"synthetic topics from the tokenizer vocabulary (seed {seed})",
    )

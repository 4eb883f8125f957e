"""Both tokenizer backends give the ids sentence-transformers' tokenizer gives, on real text."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from embeddinggemma.tokenizer import SentencePieceTokenizer, TextTokenizer

GOLDENS = json.loads((Path(__file__).parent / "goldens" / "embeddinggemma-300m.json").read_text(encoding="utf-8"))
LIMITS = dict(max_length=2048, bos_id=2, eos_id=1, pad_id=0, vocab_size=262144)
EDGE_CASES = [
    "",
    " leading and trailing  ",
    "tabs\tand\nnew\n\nlines",
    "emoji 🎉👍🏽 and symbols ©®™ ∑∫√",
    "added tokens inline: <unused0> <mask> [multimodal] <start_of_image> done",
    "<bos>literal specials<eos> and <pad>",
    "title: none | text: ",
    "a" * 3000,
    "many words " * 1500,  # over 2048 tokens: truncation
]


@pytest.fixture(scope="module")
def snapshot(real_snapshot: Path) -> Path:
    return real_snapshot


def _stdlib_passages(limit: int = 1500) -> list[str]:
    """Real text of every kind Python ships: docstrings, comments, code, several encodings."""
    passages: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        passages += [block for block in text.split("\n\n") if block.strip()][:20]
        if len(passages) >= limit:
            break
    return passages[:limit]


@pytest.mark.real_weights
def test_sentencepiece_backend_equals_tokenizers(snapshot):
    reference = TextTokenizer.from_file(snapshot / "tokenizer.json", **LIMITS)
    light = SentencePieceTokenizer.from_checkpoint(snapshot, **LIMITS)
    texts = [r["prompt"] + r["text"] for r in GOLDENS["records"]] + EDGE_CASES + _stdlib_passages()
    assert reference.count_tokens(texts) == light.count_tokens(texts)
    mismatched = [
        t[:60] for t, a, b in zip(texts, reference._encode_raw(texts), light._encode_raw(texts), strict=True) if a != b
    ]
    assert not mismatched, mismatched[:5]


@pytest.mark.real_weights
def test_tokenizers_backend_matches_transformers(snapshot):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(snapshot)
    ours = TextTokenizer.from_file(snapshot / "tokenizer.json", **LIMITS)
    texts = [r["prompt"] + r["text"] for r in GOLDENS["records"]] + EDGE_CASES
    expected = hf(texts, truncation=True, max_length=2048)["input_ids"]
    with pytest.warns(UserWarning, match="1 of"):
        assert ours.encode(texts) == expected


def test_out_of_vocabulary_token_is_named(tiny_st_dir):
    tokenizer = TextTokenizer.from_file(tiny_st_dir / "tokenizer.json", **(LIMITS | {"vocab_size": 10}))
    with pytest.raises(ValueError, match=r"input 0 contains token.*embedding table"):
        tokenizer.encode(["fast slow"])

"""Shared fixtures: a tiny random Gemma 3 encoder saved by transformers, its sentence-transformers
pipeline, and (when available) the real checkpoint.

The tiny model has deliberately odd sizes (vocab 99, hidden 48, 4 heads x 16, 2 KV heads, intermediate
37, layers [sliding, sliding, full], window radius 3 shorter than the inputs, query_pre_attn_scalar 24
!= head_dim) and random norm weights, so that a transposed or mis-broadcast tensor cannot hide.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REAL_MODEL = "google/embeddinggemma-300m"
TINY_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
}
# A small corpus for the tiny word-level vocabulary; test sentences use these words.
TINY_VOCABULARY = (
    "the a red planet mars venus is known as which of and to in for on with search result query task "
    "title none text sentence similarity | : code python function returns list string number file read "
    "write open close sort key value error line word first last big small fast slow "
)


def _tiny_tokenizer_files(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in TINY_VOCABULARY.split():
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= 99
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": "right",
        "model_max_length": 128,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere, norms included (HF initialises them to zero, which hides bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.5 if "norm" in name else 0.15
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random `transformers.Gemma3TextModel` (bidirectional) saved with save_pretrained."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    directory = tmp_path_factory.mktemp("tiny_hf")
    config = Gemma3TextConfig(
        vocab_size=99,
        hidden_size=48,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=128,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        use_bidirectional_attention=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3TextModel(config)
    randomize_(model)
    model.save_pretrained(directory)
    _tiny_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_st_dir(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder as a full sentence-transformers pipeline, saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(1)
    transformer = Transformer(str(tiny_hf_dir), max_seq_length=128)
    pooling = Pooling(48, pooling_mode="mean", include_prompt=True)
    dense_up = Dense(48, 80, bias=False, activation_function=torch.nn.Identity())
    dense_down = Dense(80, 40, bias=False, activation_function=torch.nn.Identity())
    st = SentenceTransformer(
        modules=[transformer, pooling, dense_up, dense_down, Normalize()], prompts=TINY_PROMPTS, device="cpu"
    )
    directory = tmp_path_factory.mktemp("tiny_st")
    st.save(str(directory))
    return directory


def real_checkpoint_available() -> bool:
    """True when the released checkpoint is in the local Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(REAL_MODEL, local_files_only=True, allow_patterns=["config.json"])
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def real_snapshot() -> Path:
    """The released checkpoint's directory. Skips without the weights, except in CI where they are required."""
    if not real_checkpoint_available():
        if os.environ.get("EMBEDDINGGEMMA_REQUIRE_WEIGHTS") == "1":
            pytest.fail(
                f"{REAL_MODEL} is not in the Hugging Face cache but EMBEDDINGGEMMA_REQUIRE_WEIGHTS=1 (CI); "
                "run ../shared/bin/provision-embeddinggemma"
            )
        pytest.skip(f"{REAL_MODEL} not in the local Hugging Face cache (hf download {REAL_MODEL})")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(REAL_MODEL, local_files_only=True))


@pytest.fixture(scope="session")
def real_embedder(real_snapshot: Path):
    """The released model in fp32 on CPU (skips or fails like ``real_snapshot``)."""
    from embeddinggemma import Embedder

    return Embedder.from_pretrained(REAL_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_prompts() -> dict[str, str]:
    return dict(TINY_PROMPTS)

"""Fixtures of the quantization tests: a tiny model whose rows split into blocks of 32 (the shared tiny
model's hidden size 48 and intermediate size 37 cannot: that case is tested as an error), saved in the
sentence-transformers layout with a SentencePiece tokenizer.model for the GGUF vocabulary (trained on the
same words, but its ids differ from tokenizer.json: embed with tokenizer="tokenizers")."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from quant_helpers import block_model

from embeddinggemma.checkpoint import save_checkpoint


def _sentencepiece_model(directory: Path) -> None:
    import sentencepiece

    words = [w for w in json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"] if w.isalpha()]
    lines = [" ".join(words[i : i + 7]) for i in range(len(words))] * 20
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        vocab_size=90,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())


@pytest.fixture(scope="session")
def block_dir(tiny_st_dir: Path, tiny_prompts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The block-friendly tiny model as a checkpoint directory (tokenizer.json from the shared fixture)."""
    directory = tmp_path_factory.mktemp("tiny_block")
    save_checkpoint(block_model(), directory, tokenizer_dir=tiny_st_dir, prompts=tiny_prompts)
    _sentencepiece_model(directory)
    return directory


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Tokenising in worker processes: the same ids, cuts, reports and errors as in-process `encode`, and the
Embedder's GPU-style pipeline gives the same embeddings with and without the workers."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddinggemma import Embedder
from embeddinggemma.embedder import PROCESS_TOKENIZE_MIN_TEXTS
from embeddinggemma.engine.runners import PaddedRunner
from embeddinggemma.tokenizer import BaseTokenizer, TextTokenizer, TokenizerProcesses, TruncationError

LIMITS = dict(max_length=2048, bos_id=2, eos_id=1, pad_id=0, vocab_size=262144)


def _wait_ready(processes: TokenizerProcesses, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not processes.ready:
        assert time.monotonic() < deadline, "the tokenizer workers did not start"
        time.sleep(0.02)


class _ListTokenizer(BaseTokenizer):
    """Raw ids given in advance: `encode` and `finish_arrays` compared on any ids at all."""

    def __init__(self, raw: list[list[int]], **limits: int) -> None:
        super().__init__(**limits)
        self.raw = raw

    def _encode_raw(self, texts: list[str]) -> list[list[int]]:
        return [self.raw[int(t)] for t in texts]


def _outcome(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = [list(map(int, ids)) for ids in fn()]
        except ValueError as exc:
            result = (type(exc).__name__, str(exc))
    return result, [str(w.message) for w in caught]


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(st.lists(st.integers(0, 60), min_size=2, max_size=12), min_size=1, max_size=8),
    max_length=st.integers(2, 8),
    vocab_size=st.sampled_from([40, 61]),
    first_index=st.integers(0, 50),
    on_truncation=st.sampled_from(["warn", "error"]),
)
def test_array_finish_equals_encode(raw, max_length, vocab_size, first_index, on_truncation):
    """Cut with EOS kept last, out-of-vocabulary ids only where the cut keeps them, reports by caller row."""
    tokenizer = _ListTokenizer(raw, max_length=max_length, bos_id=2, eos_id=1, pad_id=0, vocab_size=vocab_size)
    texts = [str(i) for i in range(len(raw))]
    flat = np.asarray([t for ids in raw for t in ids], dtype=np.int32)
    lengths = np.asarray([len(ids) for ids in raw], dtype=np.int64)
    want = _outcome(lambda: tokenizer.encode(texts, on_truncation, first_index=first_index))
    got = _outcome(lambda: tokenizer.finish_arrays(flat, lengths, on_truncation, first_index=first_index))
    assert got == want


@pytest.fixture(scope="module")
def real_tokenizer(real_snapshot) -> TextTokenizer:
    return TextTokenizer.from_file(real_snapshot / "tokenizer.json", **LIMITS)


@pytest.fixture(scope="module")
def processes(real_tokenizer):
    workers = TokenizerProcesses(real_tokenizer, 2)
    _wait_ready(workers)
    yield workers
    workers.close()


@pytest.mark.real_weights
def test_workers_give_the_ids_of_encode(real_tokenizer, processes):
    texts = ["", " edge  ", "emoji 🎉👍🏽 <unused0> <mask>", "many words " * 1500, "title: none | text: x"] * 40
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = real_tokenizer.encode(texts, first_index=7)
        got = processes.encode(texts, first_index=7)
    assert [ids.tolist() for ids in got] == want
    assert all(ids.dtype == np.int32 for ids in got)
    assert len(caught) == 2 and str(caught[0].message) == str(caught[1].message)
    assert "40 of 200 inputs (rows 7-206)" in str(caught[0].message)
    with pytest.raises(TruncationError, match="first at index 10"):
        processes.encode(texts, "error", first_index=7)


@pytest.mark.real_weights
def test_ctrl_c_is_left_to_the_parent(real_tokenizer, processes):
    """SIGINT (Ctrl-C in a terminal reaches the whole process group) does not kill the workers or make
    them print tracebacks; the parent decides."""
    import os
    import signal

    pids = list(processes._pool._processes)
    assert len(pids) == processes.workers
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert all(p.is_alive() for p in processes._pool._processes.values())
    assert [ids.tolist() for ids in processes.encode(["still here"])] == real_tokenizer.encode(["still here"])


@pytest.mark.real_weights
def test_a_worker_that_cannot_start_leaves_tokenising_here(real_snapshot, tmp_path, caplog):
    broken = TextTokenizer.from_file(real_snapshot / "tokenizer.json", **LIMITS)
    copy = tmp_path / "tokenizer.json"
    copy.write_text("{}")  # the workers load this, not the parent's tokenizer
    broken.source_file = copy
    workers = TokenizerProcesses(broken, 1)
    with caplog.at_level(logging.WARNING, logger="embeddinggemma.tokenizer"):
        deadline = time.monotonic() + 60
        while not all(f.done() for f in workers._started):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not workers.ready
    assert "tokenising in this process" in caplog.text
    assert [ids.tolist() for ids in workers.encode(["a b c"])] == broken.encode(["a b c"])


class _PipelinedPadded(PaddedRunner):
    """The padded CPU runner behind the pipelined interface (the GPU runner's, without a GPU)."""

    pipelined = True

    def embed_chunks(self, chunks, *, progress=None):
        for token_ids in chunks:
            yield self.embed(token_ids, progress=progress)


def test_embedder_pipeline_with_workers_equals_without(tiny_st_dir):
    base = Embedder.from_pretrained(tiny_st_dir, device="cpu")
    runner = _PipelinedPadded(base.model, pad_id=base.tokenizer.pad_id)
    with_workers = Embedder(
        base.model, base.tokenizer, base.prompts, source=base.source, runner=runner, tokenizer_workers=2
    )
    without = Embedder(base.model, base.tokenizer, base.prompts, source=base.source, runner=runner, tokenizer_workers=0)
    texts = [f"text {i} " + "word " * (i % 23) for i in range(PROCESS_TOKENIZE_MIN_TEXTS + 100)]
    assert with_workers._tokenizer_processes(10) is None  # small inputs stay in this process
    processes = with_workers._tokenizer_processes(len(texts))
    assert processes is not None and without._tokenizer_processes(len(texts)) is None
    _wait_ready(processes)
    np.testing.assert_array_equal(with_workers.encode_document(texts), without.encode_document(texts))
    streams = [
        np.concatenate(list(e.encode_stream(texts, task="document", chunk_size=1000))) for e in (with_workers, without)
    ]
    np.testing.assert_array_equal(*streams)  # workers from the fifth chunk on (4,096 texts seen)
    with_workers.close()
    assert with_workers._processes is None


def test_tokenizer_workers_must_be_a_count(tiny_st_dir):
    with pytest.raises(ValueError, match="tokenizer_workers"):
        Embedder.from_pretrained(tiny_st_dir, device="cpu", tokenizer_workers=-1)

"""The mteb adapter: protocol conformance (mteb's own mock run), prompts and titles as the model
receives them, Matryoshka dims from one encoding, metadata, and a cross-check of mteb's evaluators
against our runner on the same local data."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest

mteb = pytest.importorskip("mteb", reason="the MTEB adapter needs the [eval] extra (pip install -e '.[eval]')")

from mteb.abstasks.task_metadata import TaskType  # noqa: E402
from mteb.models.abs_encoder import get_prompt_name  # noqa: E402
from mteb.results.task_result import TaskResult  # noqa: E402

from embeddinggemma.eval.mteb_adapter import MTEBEmbedder, lookup_prompt, model_meta  # noqa: E402
from embeddinggemma.eval.mteb_local import local_mteb_tasks, local_prompts  # noqa: E402
from embeddinggemma.eval.runner import evaluate_suite  # noqa: E402
from embeddinggemma.matryoshka import matryoshka_truncate  # noqa: E402
from embeddinggemma.prompts import PromptTable  # noqa: E402

# The released checkpoint's config_sentence_transformers.json prompts, verbatim.
CHECKPOINT_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}


class RecordingEmbedder:
    """Embedder API double: records (method, prompt or titles, texts); bag-of-characters vectors."""

    embedding_dim = 12
    max_seq_length = 2048

    def __init__(self, prompts: dict[str, str]) -> None:
        self.prompts = PromptTable(prompts)
        self.calls: list[tuple[str, object, list[str]]] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.ones((len(texts), self.embedding_dim), np.float32)
        for i, text in enumerate(texts):
            for j, ch in enumerate(text):
                out[i, (ord(ch) + j) % self.embedding_dim] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode(self, texts, *, task=None, prompt=None, **kwargs):
        self.calls.append(("encode", prompt if prompt is not None else self.prompts[task], list(texts)))
        return self._embed([(prompt or "") + t for t in texts])

    def encode_query(self, texts, *, task="query", **kwargs):
        return self.encode(texts, task=task, **kwargs)

    def encode_document(self, texts, titles=None, **kwargs):
        self.calls.append(("document", list(titles) if titles is not None else None, list(texts)))
        return self._embed([f"{t}|{x}" for t, x in zip(titles or [None] * len(texts), texts, strict=True)])


def _run(model, *tasks):
    result = mteb.evaluate(model, list(tasks), cache=None, show_progress_bar=False, co2_tracker=False)
    assert not result.exceptions, [e.exception for e in result.exceptions]
    return result


def test_mock_tasks_pass_offline(tiny_embedder) -> None:
    """mteb's offline conformance grid, one mock task per task type (retrieval, reranking, instruction
    retrieval, STS, bitext, clustering, classification, regression, ...), on the tiny model.

    ``mteb.mock_run(model)`` also runs the multilingual copies of these tasks: it passes too, but
    takes ~40 s here, mostly inside mteb (clustering and bitext evaluators), so the test uses the
    monolingual grid through the same ``mteb.evaluate`` call that ``mock_run`` makes."""
    from mteb.mocks import MOCK_TASK_TEST_GRID_MONOLINGUAL
    from mteb.mocks.mock_run import get_compatible_mock_tasks

    model = MTEBEmbedder(embedder=tiny_embedder)
    tasks = [t for t in get_compatible_mock_tasks(model) if t in MOCK_TASK_TEST_GRID_MONOLINGUAL]
    assert len({t.metadata.type for t in tasks}) >= 12
    result = mteb.evaluate(model, tasks, cache=None, raise_error=False, show_progress_bar=False, co2_tracker=False)
    assert not result.exceptions, {e.task_name: e.exception[:200] for e in result.exceptions}
    assert {r.task_name for r in result.task_results} == {t.metadata.name for t in tasks}
    assert all(isinstance(r, TaskResult) and np.isfinite(r.get_score()) for r in result.task_results)


@pytest.mark.parametrize("task_type", typing.get_args(TaskType))
@pytest.mark.parametrize("side", ["query", "document", None])
def test_prompt_lookup_follows_mtebs_priority(task_type: str, side: str | None) -> None:
    """Same key as mteb's get_prompt_name, for every task type and side, with task-name overrides."""
    from mteb.types import PromptType

    class Meta:  # get_prompt_name only reads these two fields
        name = "SomeTask"
        type = task_type

    table = {**CHECKPOINT_PROMPTS, "SomeTask-document": "custom doc: "}
    prompt_type = PromptType(side) if side else None
    expected = get_prompt_name(table, Meta(), prompt_type)  # type: ignore[arg-type]
    key, prompt = lookup_prompt(table, "SomeTask", task_type, side)
    assert key == expected
    assert prompt == (table[expected] if expected else None)


def test_prompts_and_titles_reach_the_model() -> None:
    from mteb.mocks.mock_tasks import MockRegressionTask, MockRerankingTask, MockRetrievalTask, MockSTSTask

    recorder = RecordingEmbedder(CHECKPOINT_PROMPTS)
    model = MTEBEmbedder(embedder=recorder, prompts={"MockSTSTask": "custom: "})
    _run(model, MockRetrievalTask(), MockRerankingTask(), MockSTSTask(), MockRegressionTask())
    documents = [c for c in recorder.calls if c[0] == "document"]
    prompts = {c[1] for c in recorder.calls if c[0] == "encode"}
    # Corpus: body and title apart, so the model sees "title: Title of d1 | text: This is ...".
    assert any(c[1] == ["Title of d1", "Title of d2"] and c[2][0] == "This is a positive sentence" for c in documents)
    assert all(not any(t and t in body for t, body in zip(c[1] or [], c[2], strict=True)) for c in documents)
    assert CHECKPOINT_PROMPTS["Retrieval-query"] in prompts  # retrieval and reranking queries
    assert "custom: " in prompts  # a task-name prompt wins over the checkpoint's "STS"
    assert "task: classification | query: " in prompts  # Regression: not in the table -> its simplified type
    assert CHECKPOINT_PROMPTS["document"] not in prompts  # documents never go through a plain prefix


def test_dims_share_one_encoding(tiny_embedder) -> None:
    from mteb.mocks.mock_tasks import MockSTSTask

    model = MTEBEmbedder(embedder=tiny_embedder, cache_embeddings=True)
    _run(model, MockSTSTask())
    encoded = model.counter.texts
    assert encoded > 0
    small = model.with_dim(16)
    _run(small, MockSTSTask())
    assert model.counter.texts == encoded  # the 16-dim run re-used the full-width encodings
    assert small.mteb_model_meta.embed_dim == 16 and model.mteb_model_meta.embed_dim == 40
    texts = ["the red planet", "a python function"]
    loader = [{"text": texts}]
    meta = MockSTSTask().metadata
    full = model.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    cut = small.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(cut, matryoshka_truncate(full, 16), atol=1e-6)
    direct = tiny_embedder.encode(texts, task="sts", dim=16)
    np.testing.assert_allclose(cut, direct, atol=1e-5)
    with pytest.raises(ValueError, match="dim must be"):
        model.with_dim(41)


def test_model_meta_describes_the_variant_and_reloads_it(tiny_embedder, tiny_st_dir: Path) -> None:
    model = MTEBEmbedder(tiny_st_dir, dim=16, max_seq_length=64, load_options={"device": "cpu"})
    meta = model.mteb_model_meta
    assert meta.name == f"embeddinggemma/{tiny_st_dir.name}"
    assert meta.adapted_from == "google/embeddinggemma-300m"
    assert meta.embed_dim == 16
    assert meta.n_parameters == tiny_embedder.num_parameters
    assert meta.max_tokens == 64
    assert meta.similarity_fn_name.value == "cosine"
    assert meta.loader is MTEBEmbedder
    assert meta.experiment_kwargs == {"dtype": "float32", "max_seq_length": 64}  # fp32 and int8 runs stay apart
    assert "eng-Latn" in meta.languages  # inherited from mteb's registry entry for the released model
    released = model_meta(tiny_embedder, model_name="google/embeddinggemma-300m")
    assert released.name == "google/embeddinggemma-300m" and released.adapted_from is None
    # mteb re-creates the model from its metadata (how `mteb run` loads models): same variant, same vectors.
    again = meta.load_model()
    assert isinstance(again, MTEBEmbedder) and again.dim == 16 and again.embedder.max_seq_length == 64
    loader = [{"text": ["the red planet", "a python function"]}]
    sts = mteb.get_task("STS12").metadata
    np.testing.assert_allclose(
        again.encode(loader, task_metadata=sts, hf_split="test", hf_subset="default"),
        model.encode(loader, task_metadata=sts, hf_split="test", hf_subset="default"),
        atol=1e-6,
    )


def test_local_tasks_match_our_runner(tiny_embedder, tiny_suite: Path) -> None:
    """The same data scored by mteb's evaluators and by our runner gives the same numbers."""
    ours = evaluate_suite(tiny_embedder, tiny_suite, dims=[40, 16], show_progress=False)
    tasks = local_mteb_tasks(tiny_suite)
    model = MTEBEmbedder(
        embedder=tiny_embedder, prompts=local_prompts(tasks, tiny_embedder.prompts), cache_embeddings=True
    )
    retrieval = next(t for t in tasks if t.metadata.type == "Retrieval")
    assert model.prompt_for(retrieval.metadata, "query") == tiny_embedder.prompts["code_retrieval"]
    for dim in (40, 16):
        result = _run(model.with_dim(dim), *tasks)
        by_name = {r.task_name: r for r in result.task_results}
        assert set(by_name) == set(ours["tasks"])
        for name, task_result in by_name.items():
            entry = ours["tasks"][name]["dims"][str(dim)]
            assert task_result.get_score() == pytest.approx(entry["scores"]["main_score"], abs=1e-5), (
                name
            )  # mteb rounds to 5 decimals
            if name == "tiny-retrieval":  # per-language subsets and the other cut-offs agree too
                row = {r["hf_subset"]: r for r in task_result.scores["test"]}
                for lang, scores in entry["subsets"].items():
                    for metric in ("ndcg_at_10", "recall_at_1", "mrr_at_10", "map_at_100"):
                        assert row[lang][metric] == pytest.approx(scores[metric], abs=1e-5), (lang, metric)
            if name == "tiny-bitext":
                row = {r["hf_subset"]: r["f1"] for r in task_result.scores["test"]}
                assert row == pytest.approx({k: v["f1"] for k, v in entry["subsets"].items()}, abs=1e-5)
    assert 0 < ours["tasks"]["tiny-retrieval"]["dims"]["40"]["scores"]["main_score"] < 1  # not a degenerate case


@pytest.mark.real_weights
def test_real_model_card_example_through_mteb(real_embedder, tmp_path: Path) -> None:
    """The model card's query against its four documents, as an mteb retrieval task: Mars ranks first,
    and the adapter's embeddings are exactly the Embedder's (query prompt; titled documents)."""
    from embeddinggemma.eval.data import TaskSpec, write_jsonl

    docs = [
        ("venus", "Venus is often called Earth's twin because of its similar size and proximity."),
        ("mars", "Mars, known for its reddish appearance, is often referred to as the Red Planet."),
        ("jupiter", "Jupiter, the largest planet in our solar system, has a prominent red spot."),
        ("saturn", "Saturn, famous for its rings, is sometimes mistaken for the Red Planet."),
    ]
    query = "Which planet is known as the Red Planet?"
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": i, "title": i.title(), "text": t} for i, t in docs])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q", "text": query}])
    write_jsonl(tmp_path / "qrels.jsonl", [{"query-id": "q", "corpus-id": "mars", "score": 1}])
    spec = TaskSpec(
        name="model-card", kind="retrieval", root=tmp_path,
        files={"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels.jsonl"},
    )  # fmt: skip
    model = MTEBEmbedder(embedder=real_embedder, cache_embeddings=True)
    result = _run(model, *local_mteb_tasks([spec]))
    assert result.task_results[0].scores["test"][0]["ndcg_at_1"] == 1.0
    cached = model._cache  # full-width rows the adapter computed
    np.testing.assert_allclose(
        cached.prompted([query], real_embedder.prompts["Retrieval-query"]),
        real_embedder.encode_query([query]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        cached.documents([t for _, t in docs], [i.title() for i, _ in docs]),
        real_embedder.encode_document([t for _, t in docs], titles=[i.title() for i, _ in docs]),
        atol=1e-6,
    )
    assert model.tokens and model.tokens > 50

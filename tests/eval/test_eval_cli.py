"""``embeddinggemma eval`` end to end on the tiny model: local suite, MTEB path, compare, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embeddinggemma.cli import main
from embeddinggemma.eval.runner import RESULTS_FORMAT


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_local_suite_run_and_compare(
    tiny_st_dir: Path, tiny_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--suite", "local", "--suite-dir", str(tiny_suite), "--model", str(tiny_st_dir), "--no-progress"]
    full, small = tmp_path / "full.json", tmp_path / "small.json"
    code, out, err = _cli(capsys, *common, "--dim", "40", "16", "-o", str(full), "--name", "tiny all dims")
    assert code == 0, err
    data = json.loads(full.read_text())
    assert data["format"] == RESULTS_FORMAT
    assert data["name"] == "tiny all dims" and data["model"] == str(tiny_st_dir)
    assert data["dims"] == [40, 16] and data["dtype"] == "float32"
    assert data["max_seq_length"] == 128  # the local default of 512, capped at the tiny model's own limit
    assert data["variant"]["max_seq_length"] == 128
    assert {"python", "torch", "numpy"} <= set(data["versions"])
    assert data["created_utc"].endswith("Z") and data["machine"]["torch_threads"] >= 1
    assert set(data["tasks"]) == {"tiny-retrieval", "tiny-sts", "tiny-bitext"}
    for task in data["tasks"].values():
        assert set(task["dims"]) == {"40", "16"}
    enc = data["encoding"]
    assert enc["tokens"] > enc["texts_encoded"] > 0 and enc["tokens_per_second"] > 0
    assert set(data["mean_main_score"]) == {"40", "16"}
    assert "| tiny-retrieval | ndcg_at_10 |" in out and "dim 16" in out  # the Matryoshka table
    assert "tokens/s" in out

    code, _, err = _cli(capsys, *common, "--dim", "16", "-o", str(small), "--name", "tiny 16")
    assert code == 0, err
    again = json.loads(small.read_text())
    for name, task in again["tasks"].items():  # deterministic: the 16-dim slice is the same either way
        assert task["dims"]["16"]["scores"]["main_score"] == pytest.approx(
            data["tasks"][name]["dims"]["16"]["scores"]["main_score"], abs=1e-6
        )

    code, out, err = _cli(capsys, "compare", str(full), str(small))
    assert code == 0, err
    header = out.splitlines()[0]
    assert "tiny all dims" in header and "tiny 16" in header
    row = next(line for line in out.splitlines() if line.startswith("| tiny-retrieval / ndcg_at_10 @ 16 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == cells[2]  # same slice in both runs
    assert any(
        line.startswith("| tiny-retrieval / ndcg_at_10 @ 40 |") and line.rstrip().endswith("– |")
        for line in out.splitlines()
    )

    code, out, _ = _cli(capsys, "compare", str(full))  # one run: the Matryoshka table
    assert code == 0 and out.startswith("| task | main metric | dim 40 | dim 16 |")

    quantized = tmp_path / "quantized.json"
    code, out, err = _cli(capsys, *common, "--dim", "16", "--embedding-precision", "float32", "binary", "int8",
                          "-o", str(quantized))  # fmt: skip
    assert code == 0, err
    q = json.loads(quantized.read_text())
    assert q["embedding_precisions"] == ["float32", "binary", "int8"]
    assert list(q["mean_main_score"]) == ["16", "16/binary", "16/int8"]
    for name, task in q["tasks"].items():  # float32 is untouched by the extra variants
        assert task["dims"]["16"] == again["tasks"][name]["dims"]["16"]
    assert out.startswith("## ") and "| dim 16 | dim 16/binary | dim 16/int8 |" in out


def test_mteb_path_gives_the_local_runners_scores(
    tiny_st_dir: Path, tiny_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """``--mteb`` end to end (task resolution stubbed to local-data tasks, as no hub is reachable):
    mteb's evaluators and the local runner agree through the command line too."""
    from embeddinggemma.eval import mteb_run
    from embeddinggemma.eval.mteb_local import local_mteb_tasks

    monkeypatch.setattr(mteb_run, "resolve_mteb_tasks", lambda names: local_mteb_tasks(tiny_suite, tasks=names))
    mteb_out, local_out = tmp_path / "mteb.json", tmp_path / "local.json"
    common = ["--model", str(tiny_st_dir), "--dim", "40", "16", "--no-progress"]
    code, out, err = _cli(capsys, "--mteb", "tiny-sts", "tiny-bitext", *common, "-o", str(mteb_out))
    assert code == 0, err
    code, _, err = _cli(
        capsys, "--suite-dir", str(tiny_suite), "--tasks", "tiny-sts", "tiny-bitext", *common, "-o", str(local_out)
    )
    assert code == 0, err
    via_mteb, local = json.loads(mteb_out.read_text()), json.loads(local_out.read_text())
    assert via_mteb["suite"]["kind"] == "mteb" and via_mteb["errors"] == {}
    assert via_mteb["tasks"]["tiny-bitext"]["kind"] == "BitextMining"
    assert set(via_mteb["tasks"]["tiny-bitext"]["dims"]["40"]["subsets"]) == {"de-en", "fr-en"}
    for name in ("tiny-sts", "tiny-bitext"):
        for dim in ("40", "16"):
            assert via_mteb["tasks"][name]["dims"][dim]["scores"]["main_score"] == pytest.approx(
                local["tasks"][name]["dims"][dim]["scores"]["main_score"], abs=1e-5
            )
    assert via_mteb["encoding"]["tokens_per_second"] > 0
    assert "### " in out and "BitextMining" not in out.splitlines()[0]


def test_unloadable_mteb_task_is_reported_not_fatal(tiny_embedder, tiny_suite: Path) -> None:
    from datasets import Dataset

    from embeddinggemma.eval.mteb_adapter import MTEBEmbedder
    from embeddinggemma.eval.mteb_local import local_mteb_tasks
    from embeddinggemma.eval.mteb_run import evaluate_mteb

    good = local_mteb_tasks(tiny_suite, tasks=["tiny-sts"])[0]

    def offline(self, *args, **kwargs):
        raise ConnectionError("Couldn't reach 'mteb/sts12' on the Hub")

    def no_scores(self, *args, **kwargs):
        self.dataset = {"default": {"test": Dataset.from_list([{"sentence1": "a", "sentence2": "b"}] * 2)}}
        self.data_loaded = True

    broken = type("Broken", (type(local_mteb_tasks(tiny_suite, tasks=["tiny-bitext"])[0]),), {"load_data": offline})()
    renamed = good.metadata.model_copy(update={"name": "tiny-sts-no-scores"})
    bad_data = type("BadData", (type(good),), {"load_data": no_scores, "metadata": renamed})()
    adapter = MTEBEmbedder(embedder=tiny_embedder)
    run = evaluate_mteb(adapter, [broken, bad_data, good], dims=[40])
    assert set(run["tasks"]) == {"tiny-sts"}  # the good task still ran: errors are per task
    assert "ConnectionError: Couldn't reach" in run["errors"]["tiny-bitext"] and "hub" in run["errors"]["tiny-bitext"]
    assert run["errors"]["tiny-sts-no-scores"].startswith("evaluation failed at dim 40: ")
    with pytest.raises(ValueError, match="no MTEB task could be run; tiny-bitext: could not load its data"):
        evaluate_mteb(adapter, [broken], dims=[40])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mteb", "NoSuchTask"], "unknown MTEB task 'NoSuchTask'"),
        (["--mteb", "STS12x"], "Did you mean: 'STS12'"),
        (["--mteb", "MTEB(nope, v9)"], "unknown MTEB benchmark 'MTEB(nope, v9)'"),
        (["--suite-dir", "{tmp}/missing"], "no local suite in"),
        (["--dim", "0"], "--dim values must be positive"),
        (["--dim", "768"], "this model has 40 dimensions"),
        (["--tasks", "nope"], "unknown task(s) ['nope']"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--mteb", "STS12", "--embedding-precision", "binary"], "--embedding-precision applies to the local suite"),
        (["compare", "{tmp}/missing.json"], "results file"),
        (["compare", "{tmp}/not-results.json"], "not an embeddinggemma results file"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], message: str, tiny_st_dir: Path, tiny_suite: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "not-results.json").write_text('{"format": "something else"}')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = [] if argv[0] == "compare" else ["--model", str(tiny_st_dir), "--no-progress"]
    if argv[0] != "compare" and "--suite-dir" not in argv:
        base += ["--suite-dir", str(tiny_suite)]
    code, out, err = _cli(capsys, *argv, *base) if argv[0] == "compare" else _cli(capsys, *base, *argv)
    assert code == 2
    assert err.startswith("embeddinggemma eval: error: ") and err.count("\n") == 1, err
    assert message in err
    assert out == ""


def test_tables_cover_mteb_task_types() -> None:
    """MTEB runs bring task types the local suite lacks; they get a main-score table, not silence."""
    from embeddinggemma.eval.report import matryoshka_markdown, results_markdown

    def task(kind: str, metric: str, scores: dict[str, float]) -> dict:
        return {
            "kind": kind,
            "main_metric": metric,
            "dims": {d: {"scores": {"main_score": s}} for d, s in scores.items()},
        }

    results = {
        "name": "run",
        "dims": [768, 128],
        "tasks": {
            "Banking77Classification": task("Classification", "accuracy", {"768": 0.8, "128": 0.7}),
            "SciFact": task("Retrieval", "ndcg_at_10", {"768": 0.75, "128": 0.6}),
        },
        "mean_main_score": {"768": 0.775, "128": 0.65},
    }
    results["tasks"]["SciFact"]["dims"]["768"]["scores"]["ndcg_at_10"] = 0.75
    text = results_markdown(results)
    assert "| Classification task | main_score |" in text and "| Banking77Classification | 80.00 |" in text
    assert "| retrieval task | ndcg_at_10 |" in text and "| SciFact | 75.00 |" in text  # mteb's Retrieval = ours
    matrix = matryoshka_markdown(results)
    assert "| Banking77Classification | accuracy | 80.00 | 70.00 |" in matrix
    assert matrix.splitlines()[-1] == "| **mean (2 tasks)** |  | 77.50 | 65.00 |"


def test_counting_embedder_counts_the_prompted_tokens(tiny_embedder) -> None:
    from embeddinggemma.eval.counting import CountingEmbedder
    from embeddinggemma.prompts import document_prompt

    counter = CountingEmbedder(tiny_embedder)
    tok = tiny_embedder.tokenizer
    counter.encode_query(["the red planet"], task="code_retrieval")
    counter.encode_document(["a file", "the last line"], titles=["Mars", None])
    counter.encode(["sort a list"], prompt="custom | ")
    texts = [
        tiny_embedder.prompts["code_retrieval"] + "the red planet",
        document_prompt("Mars") + "a file",
        document_prompt(None) + "the last line",
        "custom | sort a list",
    ]
    assert counter.tokens == sum(len(ids) for ids in tok.encode(texts)) and counter.texts == 4
    long_text = " ".join(["line"] * 500)  # past the tiny model's 128-token limit: counted as truncated
    counter.encode([long_text])
    assert counter.tokens == sum(len(ids) for ids in tok.encode(texts)) + tiny_embedder.max_seq_length
    assert counter.seconds > 0 and counter.tokens_per_second > 0


def test_engine_option_is_recorded_and_compared(
    tiny_st_dir: Path, tiny_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A load option (here the per-channel int8 CPU path: the tiny model's rows are not blocks of 32)
    reaches Embedder.from_pretrained, is recorded as the
    run's variant, and `compare` puts fp32 and int8 side by side."""
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))  # the int8 conversion cache
    common = ["--suite-dir", str(tiny_suite), "--model", str(tiny_st_dir), "--tasks", "tiny-retrieval", "--no-progress"]
    fp32, int8 = tmp_path / "fp32.json", tmp_path / "int8.json"
    assert _cli(capsys, *common, "-o", str(fp32), "--name", "fp32")[0] == 0
    code, _, err = _cli(capsys, *common, "--quantize", "int8-channel", "-o", str(int8), "--name", "int8")
    assert code == 0, err
    assert json.loads(int8.read_text())["variant"] == {"quantize": "int8-channel", "max_seq_length": 128}
    assert json.loads(fp32.read_text())["variant"] == {"max_seq_length": 128}
    code, out, _ = _cli(capsys, "compare", str(fp32), str(int8))
    assert code == 0 and out.splitlines()[0] == "| task / metric @ dim | fp32 | int8 |"
    code, _, err = _cli(capsys, *common, "--quantize", "int3")
    assert code == 2 and "unknown quantization scheme 'int3'" in err

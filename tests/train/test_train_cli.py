"""`embeddinggemma train` and `embeddinggemma soup` end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from embeddinggemma.checkpoint import load_checkpoint
from embeddinggemma.cli import main
from embeddinggemma.eval.data import TaskSpec, write_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")


def _sts_task(root):
    """A tiny STS task in the tiny tokenizer's vocabulary, for periodic evaluation."""
    pairs = [
        ("the red planet is mars", "mars is the red planet", 5.0),
        ("python function returns a list", "the function returns a list", 4.0),
        ("open the file and read a line", "read a line of the file", 4.5),
        ("venus is known as the first planet", "sort the key value list", 0.0),
        ("big fast code", "small slow code", 2.0),
        ("which error is the last", "the last error", 3.5),
    ]
    write_jsonl(root / "pairs.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in pairs])
    TaskSpec(name="tiny-sts", kind="sts", root=root, files={"pairs": "pairs.jsonl"}).save()
    return root


def test_train_smoke_recipe_end_to_end(tiny_st_dir, tmp_path, capsys):
    task = _sts_task(tmp_path / "task")
    out = tmp_path / "run"
    args = [f"model.checkpoint={tiny_st_dir}", f"train.output_dir={out}", f"eval.tasks=[{task}]", "eval.every=2"]
    assert main(["train", "smoke-tiny", *args]) == 0
    stdout = capsys.readouterr().out
    assert "step 4/4" in stdout and f"-> {out / 'model'}" in stdout

    _, info = load_checkpoint(out / "model")  # a complete sentence-transformers checkpoint
    assert info.prompts == json.loads((tiny_st_dir / "config_sentence_transformers.json").read_text())["prompts"]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "contrastive_loss@40" in r and "spread_out_loss@16" in r for r in train)
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]["main_score"]) == {"tiny-sts"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert json.loads((out / "recipe.json").read_text())["name"] == "smoke-tiny"


def test_soup_command(tiny_st_dir, tmp_path, capsys):
    assert main(["soup", str(tiny_st_dir), str(tiny_st_dir), "-o", str(tmp_path / "soup"), "--weights", "1", "3"]) == 0
    assert "souped 2 checkpoints" in capsys.readouterr().out
    load_checkpoint(tmp_path / "soup")
    assert main(["soup", str(tiny_st_dir), "-o", str(tmp_path / "bad"), "--weights", "1", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one weight per checkpoint" in err[0]


def test_train_errors_are_one_line(capsys):
    assert main(["train", "smoke-tiny", "model.checkpoint=x", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key optim.lrr" in err[0]


def test_student_command(tiny_st_dir, tmp_path, capsys):
    teacher, _ = load_checkpoint(tiny_st_dir)
    assert main(["student", str(tiny_st_dir), "--layers", "2", "-o", str(tmp_path / "s")]) == 0
    assert "student with 2 layers" in capsys.readouterr().out
    student, _ = load_checkpoint(tmp_path / "s")
    assert student.config.backbone.num_hidden_layers == 2 < teacher.config.backbone.num_hidden_layers
    assert main(["student", str(tiny_st_dir), "--layers", "2", "-o", str(tmp_path / "s")]) == 2  # not empty
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0]

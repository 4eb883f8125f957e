"""Strict loading: missing, corrupt or mismatched checkpoints fail with errors that say what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embeddinggemma import CheckpointError, Embedder, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.checkpoint import resolve_checkpoint
from embeddinggemma.checkpoint_info import DEFAULT_MODEL as REAL_MODEL
from embeddinggemma.checkpoint_info import offline_snapshot
from embeddinggemma.config import ConfigError


@pytest.fixture
def copy_of(tiny_st_dir, tmp_path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_st_dir, target)
    return target


def test_missing_directory():
    with pytest.raises(CheckpointError, match="does not exist"):
        Embedder.from_pretrained("./no/such/dir")


def test_file_instead_of_directory(copy_of):
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(copy_of / "config.json")


def _offline_cache(monkeypatch, cache: Path) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_hub_id_not_cached_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _offline_cache(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache.*hf download"):
        resolve_checkpoint("someone/not-downloaded")


def test_offline_hub_id_resolves_as_snapshot_download(monkeypatch, tmp_path):
    from huggingface_hub import snapshot_download

    commit, other = "a" * 40, "b" * 40
    repo = tmp_path / "models--someone--model"
    for sha in (commit, other):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v2").write_text(other)
    _offline_cache(monkeypatch, tmp_path)
    for revision in (None, "v2", other):
        expected = Path(snapshot_download("someone/model", revision=revision, cache_dir=tmp_path))
        assert offline_snapshot("someone/model", revision) == expected
        assert resolve_checkpoint("someone/model", revision) == expected
    assert offline_snapshot("someone/model", "no-such-branch") is None
    assert offline_snapshot("someone/other") is None
    (repo / "trees").mkdir()
    (repo / "trees" / f"{commit}.json").write_text("{}")
    assert offline_snapshot("someone/model") is None, "a listed commit: snapshot_download checks completeness"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert offline_snapshot("someone/model") is None, "online: the hub is asked for the newest revision"


def test_offline_resolution_never_imports_the_download_stack(real_snapshot):
    code = (
        "import sys; from embeddinggemma.checkpoint_info import resolve_checkpoint; "
        f"print(resolve_checkpoint({REAL_MODEL!r})); print('huggingface_hub.file_download' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(real_snapshot), "False"]


def test_missing_tensor_is_named(copy_of):
    tensors = load_file(copy_of / "model.safetensors")
    del tensors["layers.1.mlp.up_proj.weight"]
    save_file(tensors, copy_of / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: layers\.1\.mlp\.up_proj\.weight"):
        Embedder.from_pretrained(copy_of)


def test_extra_tensor_is_named(copy_of):
    tensors = load_file(copy_of / "model.safetensors")
    tensors["lm_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, copy_of / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected: lm_head\.weight"):
        Embedder.from_pretrained(copy_of)


def test_shape_mismatch_is_named(copy_of):
    tensors = load_file(copy_of / "2_Dense" / "model.safetensors")
    tensors["linear.weight"] = tensors["linear.weight"][:, :10].contiguous()
    save_file(tensors, copy_of / "2_Dense" / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"2_Dense/config\.json does not describe the weights .* linear\.weight is \(80, 10\) in "
        r"model\.safetensors, \(80, 48\) by the config",
    ):
        Embedder.from_pretrained(copy_of)


def test_truncated_weights_file(copy_of):
    data = (copy_of / "model.safetensors").read_bytes()
    (copy_of / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        Embedder.from_pretrained(copy_of)


def test_corrupt_json(copy_of):
    (copy_of / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        Embedder.from_pretrained(copy_of)


def test_missing_modules_json_says_why(copy_of):
    (copy_of / "modules.json").unlink()
    with pytest.raises(CheckpointError, match=r"no modules.json.*Dense layers"):
        Embedder.from_pretrained(copy_of)


def test_missing_dense_weights(copy_of):
    (copy_of / "3_Dense" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors"):
        Embedder.from_pretrained(copy_of)


def test_missing_tokenizer(copy_of):
    (copy_of / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json is missing"):
        Embedder.from_pretrained(copy_of)


def test_wrong_pooling(copy_of):
    (copy_of / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    with pytest.raises(CheckpointError, match="not mean pooling"):
        Embedder.from_pretrained(copy_of)


def test_causal_config_is_refused(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    config["use_bidirectional_attention"] = False
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="causal"):
        Embedder.from_pretrained(copy_of)


def test_config_round_trip_both_hf_layouts():
    config = EmbeddingGemmaConfig().backbone
    assert Gemma3TextConfig.from_hf_dict(config.to_hf_dict()) == config
    v5 = config.to_hf_dict()
    v5["rope_parameters"] = {
        "full_attention": {"rope_theta": 5.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 7.0, "rope_type": "default"},
    }
    parsed = Gemma3TextConfig.from_hf_dict(v5)
    assert (parsed.rope_theta, parsed.rope_local_base_freq) == (5.0, 7.0)
    with pytest.raises(ConfigError, match="rope_type 'linear'"):
        Gemma3TextConfig.from_hf_dict(v5 | {"rope_parameters": {"full_attention": {"rope_type": "linear"}}})


def test_real_size_parameter_count():
    from embeddinggemma import EmbeddingGemma

    with torch.device("meta"):
        model = EmbeddingGemma(EmbeddingGemmaConfig.embeddinggemma_300m())
    assert sum(p.numel() for p in model.parameters()) == 307_581_696


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", "48", 'hidden_size must be an integer, got "48"'),
        ("num_hidden_layers", True, "num_hidden_layers must be an integer, got true"),
        ("rms_norm_eps", "1e-6", 'rms_norm_eps must be a number, got "1e-6"'),
        ("layer_types", "sliding_attention", 'layer_types must be a list of strings, got "sliding_attention"'),
    ],
)
def test_config_value_of_the_wrong_type_names_config_json(copy_of, key, value, message):
    config = json.loads((copy_of / "config.json").read_text())
    config[key] = value
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        Embedder.from_pretrained(copy_of)
    assert str(error.value) == f"{copy_of / 'config.json'}: {message}"


def test_config_of_another_size_names_config_json_briefly(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    config["intermediate_size"] = 64
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        Embedder.from_pretrained(copy_of)
    message = str(error.value)
    assert message.startswith(f"{copy_of / 'config.json'} does not describe the weights in ")
    assert "9 tensor(s) have other shapes" in message and "restore the config.json" in message
    assert len(message) < 400 and "missing" not in message


@pytest.mark.parametrize("path", ["../outside", "/etc", "2_Dense/../../outside", "..\\outside"])
def test_module_paths_outside_the_checkpoint_are_refused(copy_of, path):
    modules = json.loads((copy_of / "modules.json").read_text())
    modules[2]["path"] = path
    (copy_of / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="module paths must be folders inside the checkpoint directory"):
        Embedder.from_pretrained(copy_of)

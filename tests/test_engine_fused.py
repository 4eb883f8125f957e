"""The fused GPU path, checked on CPU: its structure (concatenated projections, one-pass norms) against
the model's modules, and its Triton kernels against their PyTorch references in Triton's interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.engine import fused
from embeddinggemma.engine.batching import pack
from embeddinggemma.engine.forward import packed_forward
from embeddinggemma.engine.runners import PackedRunner, PaddedRunner

TEXTS = ["red", "", "mars is the red planet and venus is a planet " * 6, "sort the list by key", "x" * 40]


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


def _token_ids(embedder: Embedder) -> list[list[int]]:
    return embedder.tokenizer.encode([embedder.prompts["query"] + t for t in TEXTS])


@pytest.mark.parametrize("attention", ["dense", "flex"])
def test_fused_structure_equals_the_modules(tiny, attention):
    """Same weights, same numerics: the fused layer loop (PyTorch reference kernels) vs the model."""
    batch = pack(_token_ids(tiny), multiple_of=128)
    with torch.inference_mode():
        modules = packed_forward(tiny.model, batch, attention="dense", path="modules")
        hidden = fused.encode(tiny.model, batch, attention, kernels="torch")
        reference = tiny.model.encoder(batch.input_ids, batch.position_ids, _dense(tiny, batch))[0]
        via_fused = packed_forward(tiny.model, batch, attention=attention, path="fused")
    torch.testing.assert_close(hidden, reference, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(via_fused, modules, atol=2e-5, rtol=1e-4)


def test_cached_fused_weights_follow_the_model(tiny_st_dir):
    """The concatenated projections are cached, but a weight changed in place (training) or replaced
    (a reload) is seen at the next call."""
    embedder = Embedder.from_pretrained(tiny_st_dir, device="cpu")
    batch = pack(_token_ids(embedder), multiple_of=128)
    layer = embedder.model.encoder.layers[1]

    def both():
        with torch.inference_mode():
            return fused.encode(embedder.model, batch, "dense", kernels="torch"), packed_forward(
                embedder.model, batch, attention="dense", path="modules"
            )

    before, _ = both()
    assert torch.equal(both()[0], before)  # served from the cache: same result
    with torch.no_grad():
        layer.self_attn.k_proj.weight.mul_(1.5)
    changed, modules = both()
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(
        packed_forward(embedder.model, batch, attention="dense", path="fused"), modules, atol=2e-5, rtol=1e-4
    )
    layer.mlp.up_proj.weight = torch.nn.Parameter(layer.mlp.up_proj.weight.detach() * 0.5)
    replaced, modules = both()
    assert not torch.allclose(replaced, changed)
    torch.testing.assert_close(
        packed_forward(embedder.model, batch, attention="dense", path="fused"), modules, atol=2e-5, rtol=1e-4
    )


def _dense(embedder, batch):
    from embeddinggemma.engine.masks import packed_dense_attention

    return packed_dense_attention(batch, embedder.model.encoder.config)


def test_fused_runner_equals_padded_runner(tiny):
    token_ids = _token_ids(tiny)
    padded = PaddedRunner(tiny.model).embed(token_ids)
    runner = PackedRunner(tiny.model, max_batch_tokens=64, attention="dense", path="fused")
    torch.testing.assert_close(runner.embed(token_ids), padded, atol=2e-5, rtol=1e-4)


def test_runner_defaults_and_refusals(tiny):
    runner = PackedRunner(tiny.model)
    assert (runner.attention, runner.path) == ("dense", "modules"), "CPU: dense masks, the model's modules"
    assert fused.unsupported_reason(tiny.model) is not None, "the Triton path is for CUDA"
    with pytest.raises(ValueError, match="attention must be"):
        PackedRunner(tiny.model, attention="ring")
    with pytest.raises(ValueError, match="compile=True"):
        PackedRunner(tiny.model, compile=True, path="fused")
    with pytest.raises(ValueError, match="varlen"):
        packed_forward(tiny.model, pack([[2, 1]]), attention="varlen")


def test_batch_size_does_not_cap_packed_batches(tiny):
    """On the packed engine a batch is bounded by tokens; `batch_size` (texts) is for the padded engine."""
    seen = []
    runner = PackedRunner(tiny.model, max_batch_tokens=10_000, attention="dense")
    original = runner._prepare
    runner._prepare = lambda ids, rows: seen.append(len(rows)) or original(ids, rows)
    runner.embed(_token_ids(tiny) * 20, max_texts=2)
    assert seen == [100]


KERNEL_CHECK = textwrap.dedent(
    """
    import json, sys, torch
    from embeddinggemma.engine import kernels as K

    def relative(r, g):
        return ((r.float() - g.float()).abs().max() / r.float().abs().max()).item()

    from embeddinggemma.engine import fused
    from embeddinggemma.engine.batching import pack
    from embeddinggemma import Embedder

    torch.manual_seed(0)
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[-1]
        for n, heads, kv_heads, head_dim in ((37, 3, 1, 32), (16, 4, 2, 16)):
            qkv = (torch.randn(n, (heads + 2 * kv_heads) * head_dim) * 3).to(dtype)
            qw, kw = (torch.randn(head_dim) * 0.3).to(dtype), (torch.randn(head_dim) * 0.3).to(dtype)
            positions = torch.randint(0, 50, (n,))
            cos, sin = fused.rope_tables(64, head_dim, 10000.0, dtype, torch.device("cpu"))
            args = (qkv, qw, kw, positions, cos, sin, heads, kv_heads, 1e-6)
            for part, r, g in zip("qkv", K.qk_norm_rope_reference(*args), K.qk_norm_rope(*args)):
                errors[f"qk_norm_rope.{part}.{name}.{n}"] = relative(r, g)
        branch, residual = (torch.randn(37, 48) * 5).to(dtype), (torch.randn(37, 48) * 20).to(dtype)
        wp, wn = torch.randn(48).to(dtype), torch.randn(48).to(dtype)
        ref = K.add_rmsnorm_reference(branch, residual, wp, wn, 1e-6)
        got = K.add_rmsnorm(branch, residual.clone(), wp, wn, 1e-6)
        for part, r, g in zip(("residual", "normed"), ref, got):
            errors[f"add_rmsnorm.{part}.{name}"] = relative(r, g)
        gate_up = (torch.randn(37, 74) * 3).to(dtype)
        r, g = K.geglu_reference(gate_up), K.geglu(gate_up)
        errors[f"geglu.{name}"] = relative(r, g)
        gate_up = (torch.randn(37, 2 * 192) * 3).to(dtype)  # 192 = 3 x 64: three unmasked column blocks
        r, g = K.geglu_reference(gate_up), K.geglu(gate_up)
        errors[f"geglu.column_blocks.{name}"] = relative(r, g)
        table, ids = (torch.randn(99, 48) * 0.05).to(dtype), torch.randint(0, 99, (37,))
        for part, r, g in zip(
            ("residual", "normed"),
            K.embed_rmsnorm_reference(ids, table, 6.9282, wn, 1e-6),
            K.embed_rmsnorm(ids, table, 6.9282, wn, 1e-6),
        ):
            errors[f"embed_rmsnorm.{part}.{name}"] = relative(r, g)
        # texts of 1, 2, 40 and 70 tokens (longer than a tile), then filler segments that are not pooled
        hidden = (torch.randn(160, 300) * 4).to(dtype)
        cu = torch.tensor([0, 1, 3, 43, 113, 128, 160], dtype=torch.int32)
        r, g = K.segment_mean_reference(hidden, cu, 4), K.segment_mean(hidden, cu, 4)
        assert g.shape == (4, 300) and g.dtype == torch.float32
        errors[f"segment_mean.{name}"] = relative(r, g)
    tiny = Embedder.from_pretrained(sys.argv[1], device="cpu")
    batch = pack(tiny.tokenizer.encode(["red planet", "sort the list by key " * 4, "x"]), multiple_of=1)
    with torch.inference_mode():
        r = fused.encode(tiny.model, batch, "dense", kernels="torch")
        g = fused.encode(tiny.model, batch, "dense", kernels="triton")
    errors["encoder.float32"] = relative(r, g)
    print(json.dumps(errors))
    """
)


def test_triton_kernels_match_their_references(tiny_st_dir):
    """Triton's interpreter runs the kernels on CPU tensors (a subprocess: TRITON_INTERPRET must be set
    before triton is imported, and must not leak into the other tests)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK, str(tiny_st_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    for name, error in errors.items():
        # fp32: the same arithmetic up to rsqrt/tanh ulps; bf16: a few ulps where roundings differ
        assert error <= (1e-5 if "float32" in name else 2e-2), (name, error)
    assert len(errors) == 27


def test_warm_up_checks_the_fused_path_and_falls_back(tiny, monkeypatch):
    """The background warm-up compares the fused path with the model's modules; a disagreeing kernel
    makes the runner use the modules (never wrong embeddings), a healthy one keeps the fused path."""
    from embeddinggemma.engine import runners

    token_ids = _token_ids(tiny)
    expected = PaddedRunner(tiny.model).embed(token_ids)

    healthy = PackedRunner(tiny.model, attention="dense", path="fused")
    healthy._warm = runners._warm_up_in_background(tiny.model, "dense")
    assert healthy._warm.result(timeout=120) is None
    torch.testing.assert_close(healthy.embed(token_ids), expected, atol=2e-5, rtol=1e-4)
    assert healthy.path == "fused"

    monkeypatch.setattr(
        fused,
        "encode",
        lambda model, batch, attention, kernels="auto": torch.randn(
            batch.input_ids.shape[1], model.config.backbone.hidden_size
        ),
    )
    broken = PackedRunner(tiny.model, attention="dense", path="fused")
    broken._warm = runners._warm_up_in_background(tiny.model, "dense")
    with pytest.raises(RuntimeError, match="disagrees"):
        broken._warm.result(timeout=120)
    torch.testing.assert_close(broken.embed(token_ids), expected, atol=2e-5, rtol=1e-4)
    assert broken.path == "modules"


def test_pipelined_encode_equals_encode(tiny_st_dir, monkeypatch):
    """On the GPU engine `encode` tokenises chunk k+1 while chunk k is embedded, and the runner carries
    on across chunks: same rows, same order as one call."""
    from embeddinggemma import embedder as embedder_module

    tiny = Embedder.from_pretrained(tiny_st_dir, device="cpu", engine="packed", max_batch_tokens=64)
    monkeypatch.setattr(embedder_module, "FIRST_PIPELINE_CHUNK", 2)
    monkeypatch.setattr(embedder_module, "PIPELINE_CHUNK", 8)
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 7)]
    chunks = list(embedder_module._growing_chunks(texts))
    assert [len(c) for c in chunks] == [2, 4, 8, 8, 8, 5] and [t for c in chunks for t in c] == texts
    prompted = [tiny.prompts["query"] + t for t in texts]
    got = tiny._embed_pipelined(prompted, show_progress=False, on_truncation="warn")
    want = tiny.runner.embed(tiny.tokenizer.encode(prompted))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

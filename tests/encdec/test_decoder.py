"""The causal decoder: parity with transformers' Gemma3ForCausalLM on tiny random configs (directly and
through a GGUF file in llama.cpp's layout), the config refusal kept for embeddings, and the real Gemma 3
270M predicting real text far better than a random model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from encdec_helpers import randomize, tiny_causal_config

from embeddinggemma.config import ConfigError, EmbeddingGemmaConfig, Gemma3TextConfig
from embeddinggemma.encdec.decoder import (
    Gemma3CausalLM,
    init_gemma_weights_,
    load_decoder,
    load_gguf_decoder,
    save_decoder,
)
from embeddinggemma.engine.batching import pad_batch


def _hf_model(config: Gemma3TextConfig, softcap: float | None = None, attn: str = "eager"):
    from transformers import Gemma3ForCausalLM
    from transformers import Gemma3TextConfig as HFConfig

    hf_config = HFConfig(**{k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")})
    hf_config.final_logit_softcapping = softcap
    hf_config._attn_implementation = attn
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(hf_config).eval()
    randomize(model)
    return model


def _ours_from_hf(reference, config: Gemma3TextConfig, softcap: float | None) -> Gemma3CausalLM:
    ours = Gemma3CausalLM(config, softcap).eval()
    state = {k.removeprefix("model."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    ours.model.load_state_dict(state, strict=True)
    return ours


def _ids(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[2, *torch.randint(4, vocab, (n - 1,), generator=g).tolist()] for n in lengths]


@pytest.mark.parametrize(("softcap", "attn"), [(None, "eager"), (None, "sdpa"), (3.0, "eager")])
def test_decoder_matches_transformers_causal_lm(softcap, attn):
    config = tiny_causal_config()
    reference = _hf_model(config, softcap, attn)
    ours = _ours_from_hf(reference, config, softcap)
    # longer than the left window (5): sliding layers must cut, full layers must not
    ids, mask = pad_batch(_ids(99, [17, 9, 3, 12]), 0)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_causality_and_left_window():
    """Changing token t changes no logit before t; on a sliding-only stack nothing >= window tokens later."""
    config = tiny_causal_config(layer_types=("sliding_attention",) * 3)
    model = Gemma3CausalLM(config).eval()
    randomize(model)
    ids = torch.tensor(_ids(99, [20]))
    changed = ids.clone()
    changed[0, 8] = 7 if ids[0, 8] != 7 else 8
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[0, :8], b[0, :8])
    assert not torch.allclose(a[0, 8], b[0, 8])
    # 3 layers of a 5-token window: position 8 reaches at most 3 * (5 - 1) = 12 positions ahead
    assert torch.equal(a[0, 8 + 3 * 4 + 1 :], b[0, 8 + 3 * 4 + 1 :])


def test_embedding_configs_still_refuse_causal():
    causal = tiny_causal_config()
    with pytest.raises(ConfigError, match="causal"):
        EmbeddingGemmaConfig(backbone=causal)
    with pytest.raises(ConfigError, match="causal"):
        Gemma3TextConfig.from_hf_dict(causal.to_hf_dict())
    assert Gemma3TextConfig.from_hf_dict(causal.to_hf_dict(), causal=True) == causal


def _write_tiny_gguf(path, reference, config: Gemma3TextConfig) -> None:
    """transformers weights -> a GGUF in llama.cpp's gemma3 layout (names, norms stored as w + 1)."""
    import gguf

    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
        "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_sliding_window(config.sliding_window)
    writer.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    for key, value in reference.state_dict().items():
        if key == "lm_head.weight":
            continue
        array = value.numpy().astype(np.float32) + (1.0 if key.endswith("norm.weight") else 0.0)
        key = key.removeprefix("model.")
        if key.startswith("layers."):
            index, rest = key.removeprefix("layers.").split(".", 1)
            name = f"blk.{index}.{names[rest.removesuffix('.weight')]}.weight"
        else:
            name = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}[key]
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_layout_maps_onto_transformers_weights(tmp_path):
    """6 layers (llama.cpp's Gemma 3 runtime: every 6th global, scale head_dim**-0.5), F32 tensors."""
    config = tiny_causal_config(
        num_hidden_layers=6,
        layer_types=("sliding_attention",) * 5 + ("full_attention",),
        query_pre_attn_scalar=16,
    )
    reference = _hf_model(config)
    _write_tiny_gguf(tmp_path / "tiny.gguf", reference, config)
    ours = load_gguf_decoder(tmp_path / "tiny.gguf")
    assert ours.config == config
    ids, mask = pad_batch(_ids(99, [15, 6]), 0)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, mask)[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=1e-5)
    # a cut copy keeps the chosen layers with their types; a saved copy loads back identically
    cut = load_gguf_decoder(tmp_path / "tiny.gguf", layers=[0, 5])
    assert cut.config.layer_types == ("sliding_attention", "full_attention")
    torch.testing.assert_close(cut.model.layers[1].mlp.up_proj.weight, ours.model.layers[5].mlp.up_proj.weight)
    save_decoder(ours, tmp_path / "saved")
    again = load_decoder(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(again(ids, mask), ours(ids, mask))
    with pytest.raises(ValueError, match="layers must be indices"):
        load_gguf_decoder(tmp_path / "tiny.gguf", layers=[6])


# Real text the model has not been tuned on in this project: prose and code.
REAL_TEXTS = [
    "The quick brown fox jumps over the lazy dog. This sentence contains every letter of the English alphabet "
    "and is often used to test typewriters and computer keyboards.",
    "Python is a high-level, general-purpose programming language. Its design philosophy emphasizes code "
    "readability with the use of significant indentation.",
    "def read_lines(path):\n    with open(path, encoding='utf-8') as handle:\n"
    "        return handle.read().splitlines()\n",
]


@pytest.fixture(scope="module")
def real_decoder(gemma3_gguf):
    return load_gguf_decoder(gemma3_gguf)


@pytest.mark.gemma3_gguf
@pytest.mark.real_weights
def test_real_gemma3_270m_predicts_real_text(real_decoder, real_snapshot):
    """Next-token sanity (no llama.cpp here): perplexity on real text is far below a random model's, and
    the obvious continuation ranks in the top 5."""
    from embeddinggemma.tokenizer import load_tokenizer

    config = real_decoder.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    tokenizer = load_tokenizer(real_snapshot, config, max_length=256)
    sequences = [ids[:-1] for ids in tokenizer.encode(REAL_TEXTS)]  # BOS + text (no EOS)
    trained = real_decoder.perplexity(sequences)
    random_model = Gemma3CausalLM(dataclasses.replace(config, num_hidden_layers=2, layer_types=config.layer_types[:2]))
    init_gemma_weights_(random_model)
    random_ppl = random_model.eval().perplexity(sequences)
    assert trained < 20, trained
    assert random_ppl > 1000 * trained, (random_ppl, trained)
    prompt = tokenizer.encode(["The capital of France is"])[0][:-1]
    with torch.no_grad():
        top = real_decoder(torch.tensor([prompt]))[0, -1].topk(5).indices.tolist()
    paris = tokenizer.encode(["Paris"])[0][1:-1]
    assert tokenizer.encode([" Paris"])[0][1] in top or paris[0] in top


@pytest.mark.gemma3_gguf
def test_real_decoder_agrees_with_llama_cpp(real_decoder, gemma3_gguf):
    """The reference runtime on the same file (where llama-cpp-python is installed): the same next-token
    ranking. llama.cpp multiplies with quantized activations, so logits agree closely, not exactly."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gemma3_gguf), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    for prompt in (b"The capital of France is", b"def add(a, b):\n    return"):
        tokens = llm.tokenize(prompt, add_bos=True, special=True)
        llm.reset()
        llm.eval(tokens)
        reference = torch.tensor(np.array(llm.scores[len(tokens) - 1]), dtype=torch.float32)
        with torch.no_grad():
            ours = real_decoder(torch.tensor([tokens]))[0, -1]
        assert int(ours.argmax()) == int(reference.argmax())
        top = set(reference.topk(10).indices.tolist())
        assert len(top & set(ours.topk(10).indices.tolist())) >= 8
        assert float(torch.corrcoef(torch.stack([ours, reference]))[0, 1]) > 0.99

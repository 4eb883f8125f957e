"""The T5Gemma-style encoder-decoder: built from the decoder's weights, the encoder is the decoder run with
bidirectional masks; the decoder is the causal LM plus cross-attention copied from self-attention."""

from __future__ import annotations

import torch
from encdec_helpers import randomize, tiny_causal_config

from embeddinggemma.encdec.decoder import Gemma3CausalLM
from embeddinggemma.encdec.model import Gemma3EncoderDecoder, load_encoder_decoder, save_encoder_decoder
from embeddinggemma.engine.batching import pad_batch
from embeddinggemma.engine.forward import padded_position_ids
from embeddinggemma.engine.masks import padded_attention, sdpa_attention


def _decoder(seed: int = 0) -> Gemma3CausalLM:
    lm = Gemma3CausalLM(tiny_causal_config()).eval()
    randomize(lm, seed)
    return lm


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pad_batch([[2, *torch.randint(4, 99, (n - 1,), generator=g).tolist()] for n in lengths], 0)


def test_encoder_equals_decoder_with_bidirectional_masks_at_step_0():
    lm = _decoder()
    model = Gemma3EncoderDecoder.from_decoder(lm).eval()
    ids, mask = _batch([19, 7, 12])  # longer than the window: the bidirectional band matters
    positions = padded_position_ids(mask)
    with torch.no_grad():
        encoded = model.encode(ids, positions, padded_attention(mask, model.config))
        decoder_bidirectional = lm.model(ids, positions, padded_attention(mask, model.config))
        decoder_causal = lm.model(ids, positions, padded_attention(mask, lm.config, causal=True))
    assert torch.equal(encoded, decoder_bidirectional)
    assert not torch.allclose(encoded[mask.bool()], decoder_causal[mask.bool()])  # the masks did change


def test_decoder_is_the_causal_lm_plus_cross_attention_copied_from_self_attention():
    lm = _decoder(1)
    model = Gemma3EncoderDecoder.from_decoder(lm).eval()
    for ours, theirs in zip(model.decoder.layers, lm.model.layers, strict=True):
        for name, value in theirs.self_attn.state_dict().items():
            assert torch.equal(ours.cross_attn.state_dict()[name], value)
            assert torch.equal(ours.self_attn.state_dict()[name], value)
        assert torch.equal(ours.pre_cross_attn_layernorm.weight, theirs.input_layernorm.weight)
        assert torch.equal(ours.post_cross_attn_layernorm.weight, theirs.post_attention_layernorm.weight)
        assert ours.cross_attn.q_proj.weight.data_ptr() != ours.self_attn.q_proj.weight.data_ptr()  # copies
    # one table (tied): encoder input, decoder input and output projection
    tables = [p for n, p in model.named_parameters() if p.shape == lm.model.embed_tokens.weight.shape]
    assert len(tables) == 1
    # with the cross-attention's output projection zeroed, the decoder computes the causal LM exactly
    ids, mask = _batch([11, 6], seed=2)
    source, source_mask = _batch([9, 5], seed=3)
    positions = padded_position_ids(mask)
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.cross_attn.o_proj.weight.zero_()
        memory = model.encode(source, padded_position_ids(source_mask), padded_attention(source_mask, model.config))
        cross = sdpa_attention(source_mask.bool()[:, None, None, :])
        hidden = model.decode(ids, positions, padded_attention(mask, model.config, causal=True), memory, cross)
        torch.testing.assert_close(model.logits(hidden), lm(ids, mask), rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = Gemma3EncoderDecoder.from_decoder(_decoder(2)).eval()
    save_encoder_decoder(model, tmp_path / "ed", record={"source": "test"})
    again = load_encoder_decoder(tmp_path / "ed")
    assert again.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

"""GGUF export for llama.cpp / Ollama: architecture `gemma-embedding`, with the two Dense projections.

Written with the `gguf` package (llama.cpp's own writer), in the layout llama.cpp's converter gives
EmbeddingGemma with `--sentence-transformers-dense-modules` (without the projections every embedding
is wrong: llama.cpp #16367):
- hyper-parameters under `gemma-embedding.*`, mean pooling, the original sliding window (512);
- the SentencePiece vocabulary (pieces, scores, token types), BOS/EOS added, no space prefix;
- tensors named as llama.cpp expects (`token_embd`, `blk.N.attn_q`, ..., `dense_2`, `dense_3`); norm
  weights shifted by +1, because llama.cpp multiplies by w where Gemma multiplies by (1 + w);
- each weight as Q8_0, Q4_0 or F32 per the scheme (the mixed scheme per tensor), holding exactly the
  integers and fp16 scales of our converted model (`quant/qat.py`), so llama.cpp dequantizes to the
  weights our quantized model computes with;
- the task prompts as `embeddinggemma.prompt.<task>` strings: GGUF has no standard key for them, and
  llama.cpp does not apply them (callers prepend the prompt, as with any runtime).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddinggemma.checkpoint import CheckpointInfo
from embeddinggemma.model import EmbeddingGemma, RMSNorm
from embeddinggemma.quant.formats import Layout
from embeddinggemma.quant.qat import QuantizedEmbedding, QuantizedLinear

logger = logging.getLogger(__name__)

ARCH = "gemma-embedding"
PROMPT_KEY = "embeddinggemma.prompt."


def _gguf_name(name: str, name_map) -> str:
    """Our module name -> llama.cpp's tensor name (without the `.weight` suffix)."""
    if name.startswith("dense."):
        index = int(name.split(".")[1])
        return f"dense_{index + 2}"  # sentence-transformers' 2_Dense, 3_Dense
    hf = "model." + name.removeprefix("encoder.")
    mapped = name_map.get_name(hf)
    if mapped is None:
        raise ValueError(f"GGUF export: no llama.cpp tensor name for {name!r}")
    return mapped


def _block_bytes(q: torch.Tensor, scale: torch.Tensor, layout: Layout) -> np.ndarray:
    """GGUF block bytes (R, C // 32 * type_size) from signed integers and fp16 scales."""
    rows, cols = q.shape
    blocks = cols // layout.block
    d = scale.to(torch.float16).numpy().view(np.uint8).reshape(rows, blocks, 2)
    values = q.numpy().reshape(rows, blocks, layout.block)
    if layout.name == "q8_0":
        qs = values.view(np.uint8)
    else:  # q4_0: unsigned q + 8; byte j holds value j (low nibble) and value j + 16 (high nibble)
        unsigned = (values.astype(np.int16) + 8).astype(np.uint8)
        half = layout.block // 2
        qs = unsigned[..., :half] | (unsigned[..., half:] << 4)
    return np.concatenate([d, qs], axis=-1).reshape(rows, -1)


def _vocabulary(info: CheckpointInfo, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and llama.cpp token types from the checkpoint's SentencePiece model."""
    import gguf

    model_file = info.path / "tokenizer.model"
    if not model_file.exists():
        raise FileNotFoundError(f"{model_file} is missing; GGUF export needs the SentencePiece tokenizer.model")
    try:
        import sentencepiece
    except ImportError:
        raise ImportError(
            "GGUF export reads tokenizer.model with sentencepiece: pip install 'embeddinggemma[export]'"
        ) from None
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    size = processor.get_piece_size()
    if size > vocab_size:
        raise ValueError(f"tokenizer.model has {size} pieces but the embedding table has {vocab_size} rows")
    pieces, scores, types = [], [], []
    for i in range(vocab_size):
        if i >= size:  # table rows past the tokenizer (padding): unused, as llama.cpp's converter writes them
            pieces.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        pieces.append(processor.id_to_piece(i).encode("utf-8"))
        scores.append(processor.get_score(i))
        if processor.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif processor.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif processor.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif processor.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return pieces, scores, types


def _file_type(layouts: set[str]) -> int:
    import gguf

    if not layouts:
        return gguf.LlamaFileType.ALL_F32
    return gguf.LlamaFileType.MOSTLY_Q4_0 if "q4_0" in layouts else gguf.LlamaFileType.MOSTLY_Q8_0


def write_gguf(model: EmbeddingGemma, info: CheckpointInfo, path: Path, *, name: str = "embeddinggemma") -> None:
    """Write `model` (float, or converted with `qat.convert_`) and its tokenizer to `path` (temp + rename)."""
    import gguf

    config = model.config
    backbone = config.backbone
    if config.head.dense_bias and any(config.head.dense_bias):
        raise ValueError("GGUF export: llama.cpp's dense_2 / dense_3 have no bias; this head has one")
    if len(config.head.dense_features) != 2:
        raise ValueError(
            f"GGUF export: llama.cpp expects two Dense projections, this head has {len(config.head.dense_features)}"
        )
    for module in model.modules():
        if isinstance(module, QuantizedLinear | QuantizedEmbedding) and module.layout.block is None:
            raise ValueError(
                f"GGUF export: {module.layout.name} (per-channel scales) has no GGUF type; use int8, int4 or mixed"
            )
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), ARCH)
    try:
        _write_metadata(writer, model, info, name)
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA_EMBEDDING, backbone.num_hidden_layers)
        layouts = _write_tensors(writer, model, name_map)
        writer.add_file_type(_file_type(layouts))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _write_metadata(writer, model: EmbeddingGemma, info: CheckpointInfo, name: str) -> None:
    import gguf

    backbone = model.config.backbone
    writer.add_name(name)
    writer.add_context_length(backbone.max_position_embeddings)
    writer.add_embedding_length(backbone.hidden_size)
    writer.add_block_count(backbone.num_hidden_layers)
    writer.add_feed_forward_length(backbone.intermediate_size)
    writer.add_head_count(backbone.num_attention_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_layer_norm_rms_eps(backbone.rms_norm_eps)
    writer.add_key_length(backbone.head_dim)
    writer.add_value_length(backbone.head_dim)
    writer.add_rope_freq_base(backbone.rope_theta)
    writer.add_sliding_window(backbone.sliding_window)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    dims = (backbone.hidden_size, *model.config.head.dense_features)
    for index, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        writer.add_dense_features_dims(f"dense_{index + 2}", d_in, d_out)
    pieces, scores, types = _vocabulary(info, backbone.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(backbone.bos_token_id)
    writer.add_eos_token_id(backbone.eos_token_id)
    writer.add_pad_token_id(backbone.pad_token_id)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_space_prefix(False)
    for task, prompt in sorted(info.prompts.items()):
        writer.add_string(PROMPT_KEY + task, prompt)


def _write_tensors(writer, model: EmbeddingGemma, name_map) -> set[str]:
    import gguf

    layouts: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, QuantizedLinear | QuantizedEmbedding):
            layout = module.layout
            layouts.add(layout.name)
            qtype = gguf.GGMLQuantizationType.Q8_0 if layout.name == "q8_0" else gguf.GGMLQuantizationType.Q4_0
            data = _block_bytes(module.qweight, module.scale, layout)
            writer.add_tensor(
                _gguf_name(module_name, name_map) + ".weight",
                data,
                raw_dtype=qtype,
            )
        elif isinstance(module, nn.Linear | nn.Embedding):
            if getattr(module, "bias", None) is not None:
                raise ValueError(f"GGUF export: {module_name} has a bias, which llama.cpp's gemma-embedding lacks")
            weight = module.weight.detach().float().contiguous().numpy()
            writer.add_tensor(_gguf_name(module_name, name_map) + ".weight", weight)
        elif isinstance(module, RMSNorm):
            # llama.cpp multiplies by w; Gemma's norms multiply by (1 + w)
            weight = (1.0 + module.weight.detach().float()).contiguous().numpy()
            writer.add_tensor(_gguf_name(module_name, name_map) + ".weight", weight)
    return layouts

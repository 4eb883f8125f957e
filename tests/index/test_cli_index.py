"""`embeddinggemma index` and `embeddinggemma search` through the real entry point (tiny model)."""

from __future__ import annotations

import json

import pytest

from embeddinggemma.cli import main


def test_index_then_search_json_and_text(sample_folder, tmp_path, tiny_st_dir, capsys):
    db = tmp_path / "i.db"
    assert main(["index", str(sample_folder), "--db", str(db), "--model", str(tiny_st_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "4 files embedded" in err and "the index holds 4 files" in err
    assert "skipped: 1 unsupported type (.bin) (e.g. image.bin), 1 binary or not UTF-8 (e.g. README)" in err
    assert main(["index", str(sample_folder), "--db", str(db), "--no-progress"]) == 0  # the index's own model
    err = capsys.readouterr().err
    assert "0 files embedded" in err and "4 unchanged" in err
    assert main(["search", "close the file", "--db", str(db), "--mode", "bm25", "-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["path"] == "files.rst" and results[0]["line"] == 9 and len(results) == 2
    assert main(["search", "the red planet", "--db", str(db), "--hybrid", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].startswith("  1. ") and ":" in lines[0].split()[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "x", "--db", "{tmp}/missing.db", "--mode", "bm25"], "no index at"),
        (["index", "{tmp}/nowhere", "--db", "{tmp}/i.db", "--model", "{tiny}"], "is not a folder"),
        (
            ["index", "{folder}", "--db", "{tmp}/i.db", "--model", "{tiny}", "--overlap-tokens", "500"],
            "overlap must be",
        ),
    ],
)
def test_errors_are_one_line(sample_folder, tmp_path, tiny_st_dir, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, tiny=tiny_st_dir, folder=sample_folder) for a in argv]
    assert main([*argv, "--no-progress"] if argv[0] == "index" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_other_dim_is_refused_with_the_rebuild_command(sample_folder, tmp_path, tiny_st_dir, capsys):
    db = tmp_path / "i.db"
    base = ["index", str(sample_folder), "--db", str(db), "--model", str(tiny_st_dir), "--no-progress"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--dim", "32"]) == 2
    err = capsys.readouterr().err
    assert "dim 40 (this run: 32)" in err and f"embeddinggemma index DIR --db {db} --rebuild" in err
    assert main([*base, "--dim", "32", "--rebuild"]) == 0


def test_pdf_pages_are_indexed(tmp_path, tiny_st_dir, capsys):
    pytest.importorskip("pypdf")
    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "planets.pdf").write_bytes(_pdf(["the red planet mars", "sort the list of number"]))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    db = tmp_path / "i.db"
    assert main(["index", str(folder), "--db", str(db), "--model", str(tiny_st_dir), "--no-progress"]) == 0
    assert "1 unreadable PDF (e.g. broken.pdf)" in capsys.readouterr().err
    assert main(["search", "sort the list", "--db", str(db), "--mode", "bm25", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["results"][0]
    assert (first["path"], first["page"], first["line"], first["title"]) == ("planets.pdf", 2, 1, "planets.pdf")


def _pdf(pages: list[str]) -> bytes:
    """A minimal PDF with one line of Helvetica text per page (offsets computed, so readers need no repair)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        content = len(objects) + 2
        kids.append(f"{len(objects) + 1} 0 R")
        font = "<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R /Resources {font} >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out

"""Source extraction for the local suite on small inline fixtures (offline), plus one
opt-in test that downloads the pinned packages and builds the whole suite."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakes import fake_deb, fake_mo

from embeddinggemma.corpus import debian
from embeddinggemma.corpus.debian import DebianPackage, fetch_deb, iter_deb_files
from embeddinggemma.corpus.extract_code import docstring_summary, extract_functions, module_name
from embeddinggemma.corpus.extract_gettext import mineable_text, parse_mo, parse_po
from embeddinggemma.corpus.extract_man import parse_man, roff_inline, split_name_line
from embeddinggemma.corpus.local_suite import _cut_words
from embeddinggemma.corpus.suite_sources import in_suite_partition, msgid_source_id

# ----------------------------------------------------------------------------- man pages

ROFF = r""".\" Copyright comment that must vanish
.TH OPEN 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
open, openat, creat \- open and possibly create a file
.SH SYNOPSIS
.nf
.B #include <fcntl.h>
.BI "int open(const char *" pathname ", int " flags );
.fi
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by
.IR pathname .
If the file does not exist, it may \(em optionally \(em be created
by \fBopen\fP() (see \fIflags\fR).
.PP
The return value is a file descriptor; \
this line continues.
.TS
tab(:);
l l.
O_RDONLY:read only
.TE
.SS Access modes
.TP
.B O_RDONLY
Read\-only access.\" trailing comment
.SH "SEE ALSO"
.BR close (2)
"""


def test_parse_man_sections_fonts_and_escapes() -> None:
    page = parse_man(ROFF)
    assert (page.title, page.section) == ("OPEN", "2")
    assert [h for h, _ in page.sections] == ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"]
    desc = page.get("description")
    assert desc is not None
    paragraphs = desc.split("\n")
    assert paragraphs[0] == (
        "The open() system call opens the file specified by pathname. "
        "If the file does not exist, it may \u2014 optionally \u2014 be created by open() (see flags)."
    )
    assert paragraphs[1] == "The return value is a file descriptor; this line continues."
    assert "tab(:)" not in desc
    assert "read only" not in desc
    assert paragraphs[2:] == ["Access modes", "O_RDONLY Read-only access."]  # .TP tag + body: one paragraph
    # .nf keeps one line per source line; .BI concatenates its arguments without spaces.
    assert page.get("SYNOPSIS") == "#include <fcntl.h>\nint open(const char *pathname, int flags);"
    assert page.get("SEE ALSO") == "close(2)"
    assert "Copyright" not in json.dumps(page.sections)


def test_roff_inline_and_name_line() -> None:
    assert roff_inline(r"\fBfoo\fP\-bar \(lqq\(rq \[u00E9]t\['e] a\~b\&.") == "foo-bar \u201cq\u201d \u00e9t a b."
    assert split_name_line("open, openat, creat - open and possibly create a file") == (
        ["open", "openat", "creat"],
        "open and possibly create a file",
    )
    # Translated pages keep the convention; an em dash works as well.
    assert split_name_line("printf \u2014 formatierte Ausgabe")[1] == "formatierte Ausgabe"  # type: ignore[index]
    assert split_name_line("no separator here") is None


def test_cut_words_prefers_sentence_ends() -> None:
    text = "One two three four. Five six seven eight.\nNine ten eleven twelve."
    assert _cut_words(text, 100) == text
    assert _cut_words(text, 9) == "One two three four. Five six seven eight."
    # No sentence end before half the limit: hard cut at the word limit.
    assert _cut_words("a b c d e f g h i j k l.", 4) == "a b c d"


# ------------------------------------------------------------------------------- python

MODULE = '''
"""Module docstring."""
import os


def add(a, b):
    """Return the sum of two numbers.

    Longer explanation that is not part of the query.
    """
    total = a + b
    # a comment line does not count
    if total < 0:
        total = -total
    return total


def trivial():
    """Do nothing at all here."""
    pass


def undocumented(x):
    return x * 2


class Box:
    @staticmethod
    def make(size):
        """Create a box
        of the given size."""
        box = Box()
        box.size = size
        return box

    class Inner:
        async def fetch(self):
            """Fetch the inner value asynchronously."""
            value = await self.load()
            value += 1
            return value

    def oneliner(self): """Docstring on the def line."""; return 1
'''


def test_extract_functions_strips_docstrings() -> None:
    funcs = {f.qualname: f for f in extract_functions(MODULE, "pkg.mod")}
    assert set(funcs) == {"add", "trivial", "Box.make", "Box.Inner.fetch"}  # no undocumented, no one-liner
    add = funcs["add"]
    assert add.summary == "Return the sum of two numbers."
    assert add.code.splitlines()[0] == "def add(a, b):"
    assert "sum of two" not in add.code
    assert "Longer explanation" not in add.code
    assert add.code_lines == 4  # total=, if, total=-, return (comments and blank lines excluded)
    assert funcs["trivial"].code_lines == 1
    make = funcs["Box.make"]
    assert make.summary == "Create a box of the given size."  # first paragraph, on one line
    assert make.code.startswith("@staticmethod\ndef make(size):")  # dedented, decorator kept
    assert funcs["Box.Inner.fetch"].code.startswith("async def fetch(self):")


def test_module_names_and_summaries() -> None:
    assert module_name("usr/lib/python3.11/json/decoder.py") == "json.decoder"
    assert module_name("usr/lib/python3.11/json/__init__.py") == "json"
    assert module_name("usr/share/doc/foo.py") is None
    assert docstring_summary("  First line\n  continues.\n\n  Second paragraph.") == "First line continues."


# ------------------------------------------------------------------------------ gettext

PO = r"""
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

#: src/ls.c:10
msgid "cannot access the current directory"
msgstr "Zugriff auf das aktuelle Verzeichnis nicht möglich"

#, fuzzy, c-format
msgid "%s: file has shrunk too much"
msgstr "%s: Datei ist zu sehr geschrumpft"

msgctxt "menu"
msgid "Open the file"
msgstr "Datei öffnen"

msgid ""
"Print the \"last\" lines\n"
"of each FILE.\n"
msgstr ""
"Die \"letzten\" Zeilen\n"
"jeder DATEI ausgeben.\n"

msgid "one file"
msgid_plural "%d files"
msgstr[0] "eine Datei"
msgstr[1] "%d Dateien"
"""


def test_parse_po_and_mo_agree() -> None:
    po = parse_po(PO)
    by_id = {m.msgid: m for m in po}
    assert len(po) == 5
    assert by_id["%s: file has shrunk too much"].fuzzy
    assert by_id["Open the file"].context == "menu"
    assert by_id['Print the "last" lines\nof each FILE.\n'].msgstr == 'Die "letzten" Zeilen\njeder DATEI ausgeben.\n'
    assert by_id["one file"].plural
    assert by_id["one file"].msgstr == "eine Datei"
    singular = [m for m in po if not m.plural]
    mo = parse_mo(fake_mo({(m.context + "\x04" if m.context else "") + m.msgid: m.msgstr for m in singular}))
    assert {(m.msgid, m.msgstr, m.context) for m in mo} == {(m.msgid, m.msgstr, m.context) for m in singular}
    with pytest.raises(ValueError, match="magic"):
        parse_mo(b"\x00" * 40)


def test_mineable_text_filters() -> None:
    assert mineable_text("cannot get current   directory\n") == "cannot get current directory"
    assert mineable_text("%s: %s: %s") is None  # format directives only
    assert mineable_text("  -a, --all   list all\n") is None  # options do not count as words
    assert mineable_text("%s: file has shrunk") is None  # 3 real words
    assert mineable_text("%s: file has shrunk too much") == "%s: file has shrunk too much"
    assert mineable_text("word " * 41) is None  # a --help block, not a sentence


# ------------------------------------------------------------------------ partition/deb


def test_partition_is_fixed_and_balanced() -> None:
    # Golden values: changing the rule would silently let training data overlap old suites.
    assert in_suite_partition("cpython-stdlib:json.decoder") is True
    assert in_suite_partition("cpython-stdlib:argparse") is False
    assert in_suite_partition("man-pages:man2/open.2") is True
    assert in_suite_partition("man-pages:man3/printf.3") is False
    assert msgid_source_id("coreutils", "cannot get current directory") == "gettext:coreutils:9a89030310afc0d6"
    share = sum(in_suite_partition(f"man-pages:man3/f{i}.3") for i in range(2000)) / 2000
    assert 0.45 < share < 0.55


def test_iter_deb_files_reads_members_sorted_without_symlinks(tmp_path: Path) -> None:
    deb = tmp_path / "x.deb"
    fake_deb(
        deb,
        {"usr/b.txt": b"B", "usr/a.txt": b"A", "etc/c.conf": b"C"},
        symlinks={"usr/share/man/man2/creat.2.gz": "open.2.gz"},
    )
    assert list(iter_deb_files(deb, lambda p: p.startswith("usr/"))) == [
        ("usr/a.txt", b"A"),
        ("usr/b.txt", b"B"),
    ]


def test_fetch_deb_uses_verified_cache_and_explains_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"pinned bytes"
    pkg = DebianPackage("demo", "1:2.0-1", "all", debian.hashlib.sha256(content).hexdigest())
    assert pkg.filename == "demo_1%3a2.0-1_all.deb"
    assert pkg.spec == "demo=1:2.0-1"
    (tmp_path / pkg.filename).write_bytes(content)
    monkeypatch.setattr(debian.shutil, "which", lambda _: None)  # no apt: the cache must suffice
    assert fetch_deb(pkg, tmp_path) == tmp_path / pkg.filename
    (tmp_path / pkg.filename).write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match=r"apt-get is not available.*sha256"):
        fetch_deb(pkg, tmp_path)
    assert not (tmp_path / pkg.filename).exists()  # the bad copy is not kept


# --------------------------------------------------------------------------- full build


@pytest.mark.suite_build
@pytest.mark.skipif(
    os.environ.get("EMBEDDINGGEMMA_SUITE_BUILD") != "1",
    reason="downloads ~40 MB of Debian packages: set EMBEDDINGGEMMA_SUITE_BUILD=1 (after apt-get update)",
)
def test_build_local_suite(tmp_path: Path) -> None:
    from embeddinggemma.corpus.local_suite import build_local_suite, used_source_ids
    from embeddinggemma.eval.runner import suite_tasks

    out = Path(os.environ.get("EMBEDDINGGEMMA_SUITE_DIR", tmp_path / "suite"))
    manifest = build_local_suite(out, force=True)
    tasks = manifest["tasks"]
    assert set(tasks) == {
        "stdlib-code-retrieval",
        "manpages-en-retrieval",
        "manpages-xx-en-retrieval",
        "coreutils-bitext",
    }
    for name in ("stdlib-code-retrieval", "manpages-en-retrieval", "manpages-xx-en-retrieval"):
        assert 300 <= tasks[name]["queries"] <= 1500
    assert tasks["coreutils-bitext"]["pairs"] >= 600
    used = used_source_ids(out)
    assert used
    assert all(in_suite_partition(i) for i in used)
    assert len(suite_tasks(out)) == 4
    t0 = time.perf_counter()
    again = build_local_suite(out)  # up to date: verified, not rebuilt
    assert again["files"] == manifest["files"]
    assert time.perf_counter() - t0 < 10

"""Minimal real-format inputs for the corpus tests: a Debian binary package and a gettext catalogue."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path


def fake_deb(path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """Write a ``.deb`` with ``files`` (and ``symlinks``, path -> target) under ``./`` in its data.tar.xz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            link = tarfile.TarInfo("./" + name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    out = b"!<arch>\n"
    for name, member in (("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", data.getvalue())):
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(member):<10}`\n".encode() + member
        out += b"\n" if len(member) % 2 else b""
    path.write_bytes(out)
    return path


def fake_mo(pairs: dict[str, str]) -> bytes:
    """A little-endian gettext ``.mo`` catalogue (what msgfmt writes, minus the hash table); a key
    ``"context\x04msgid"`` carries a context."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **pairs}.items())
    n = len(entries)
    start = 28 + 16 * n
    blob, originals, translations = b"", [], []
    for table, index in ((originals, 0), (translations, 1)):
        for entry in entries:
            data = entry[index].encode()
            table.append((len(data), start + len(blob)))
            blob += data + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    return header + b"".join(struct.pack("<2I", *e) for e in originals + translations) + blob

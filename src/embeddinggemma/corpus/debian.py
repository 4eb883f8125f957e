"""Pinned Debian packages as a reproducible source of real text.

A package is named by exact version *and* the sha256 of its ``.deb``: the local benchmark
suite is only comparable across machines and months if every build reads the same bytes.
Downloads use ``apt-get download`` (Debian's ordinary client, so the machine's configured
mirror and proxy apply) into a cache directory; a cached file whose hash matches is reused
without touching the network. Members are read straight out of the ``.deb`` (an ``ar``
archive holding ``data.tar.xz``), so nothing is unpacked to disk and no root is needed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DebianPackage", "fetch_deb", "iter_deb_files", "sha256_file"]


@dataclass(frozen=True)
class DebianPackage:
    """An exact ``.deb``: name, version (with epoch, if any), architecture and sha256."""

    name: str
    version: str
    arch: str
    sha256: str
    license: str = ""

    @property
    def filename(self) -> str:
        # apt-get download writes the epoch colon URL-encoded, e.g. manpages-pl_1%3a4.18.1-1_all.deb
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    @property
    def spec(self) -> str:
        """``name=version`` for apt (the architecture is pinned too when not ``all``)."""
        arch = "" if self.arch == "all" else f":{self.arch}"
        return f"{self.name}{arch}={self.version}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_deb(pkg: DebianPackage, cache_dir: str | Path) -> Path:
    """Return the verified path of ``pkg`` in ``cache_dir``, downloading it if needed.

    Raises:
        RuntimeError: if apt cannot provide the file or the file's hash is not the pinned
            one; the message says how to supply the exact file by hand.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / pkg.filename
    if target.is_file():
        got = sha256_file(target)
        if got == pkg.sha256:
            return target
        logger.warning("%s: cached file has sha256 %s, expected %s; downloading again", target, got, pkg.sha256)
        target.unlink()
    manual = (
        f"put the exact file {pkg.filename} (sha256 {pkg.sha256}) into {cache_dir}, "
        "e.g. from Debian's snapshot archive, and run again"
    )
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get is not available to download {pkg.label}; {manual}")
    logger.info("downloading %s", pkg.label)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        # Sandbox user root: the _apt user may not be able to write into the cache directory.
        cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg.spec]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed ({proc.stderr.strip()[-400:]}); run `apt-get update` first "
                f"(the version may also have left the mirror), or {manual}"
            )
        files = list(Path(tmp).glob("*.deb"))
        if len(files) != 1:
            raise RuntimeError(f"apt-get download {pkg.spec} produced {[f.name for f in files]}; {manual}")
        got = sha256_file(files[0])
        if got != pkg.sha256:
            raise RuntimeError(
                f"{pkg.label}: downloaded file has sha256 {got}, pinned {pkg.sha256}; refusing to build "
                f"from different bytes. {manual}"
            )
        files[0].replace(target)
    return target


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of a System V ``ar`` archive (the .deb container format)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        yield name, data[pos : pos + size]
        pos += size + (size % 2)  # members are 2-byte aligned


def iter_deb_files(deb_path: str | Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path, content)`` of the regular files in a ``.deb`` for which ``keep(path)``
    is true, sorted by path. Paths are relative, without the leading ``./``. Symlinks
    (man-page aliases, for instance) are skipped: they carry no text of their own."""
    raw = Path(deb_path).read_bytes()
    for name, member in _ar_members(raw):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise RuntimeError(f"{deb_path}: zstd-compressed data ({name}) is not supported by Python's tarfile")
            found: list[tuple[str, bytes]] = []
            with tarfile.open(fileobj=io.BytesIO(member), mode="r:*") as tar:
                for info in tar:
                    path = info.name.removeprefix("./")
                    if info.isfile() and keep(path):
                        fh = tar.extractfile(info)
                        if fh is not None:
                            found.append((path, fh.read()))
            yield from sorted(found)
            return
    raise ValueError(f"{deb_path}: no data.tar member; is this a Debian binary package?")

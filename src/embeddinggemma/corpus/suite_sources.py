"""What the local benchmark suite is cut from: pinned packages and source identifiers.

Kept apart from the builder so that training-data code can import the partition rule
(:func:`in_suite_partition`) and the exact package pins without the suite machinery.

Every source item has an identifier: ``cpython-stdlib:<module>`` (e.g.
``cpython-stdlib:json.decoder``), ``man-pages:<dir>/<page>`` (e.g. ``man-pages:man2/open.2``;
a translated page shares its English page's identifier) and
``gettext:<domain>:<sha256(msgid)[:16]>``. The suite only uses identifiers for which
:func:`in_suite_partition` is true; training data must use only the others.
"""

from __future__ import annotations

import hashlib

from embeddinggemma.corpus.debian import DebianPackage

__all__ = ["PACKAGES", "PARTITION_SALT", "SUITE_VERSION", "in_suite_partition", "msgid_source_id"]

# Bump when extraction or selection logic changes: it is part of the build key, so an existing
# build is then rebuilt instead of being reused. (The partition salt must never change.)
SUITE_VERSION = "local-suite/v2"  # v2: smaller tasks (CPU budget), sampled man-page corpus
PARTITION_SALT = "embeddinggemma-local-suite/v1:"

_MP_LICENSE = "GPL-2+ and per-page free licences (Linux-man-pages-copyleft, BSD, ...): debian/copyright"
_L10N_LICENSE = "GPL-3+ (manpages-l10n translations of the man-pages project): debian/copyright"


def _pkg(name: str, version: str, arch: str, sha256: str, license: str) -> DebianPackage:
    return DebianPackage(name, version, arch, sha256, license)


PACKAGES: dict[str, DebianPackage] = {
    p.name: p
    for p in [
        _pkg("libpython3.11-minimal", "3.11.2-6+deb12u9", "amd64",
             "69f41cfa3f4ba17284e538f843069d7529c53c207d2ae17a5b02785944870e33", "PSF-2.0"),
        _pkg("libpython3.11-stdlib", "3.11.2-6+deb12u9", "amd64",
             "10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53", "PSF-2.0"),
        _pkg("manpages", "6.03-2", "all",
             "efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91", _MP_LICENSE),
        _pkg("manpages-dev", "6.03-2", "all",
             "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838", _MP_LICENSE),
        _pkg("manpages-de", "4.18.1-1", "all",
             "37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978", _L10N_LICENSE),
        _pkg("manpages-de-dev", "4.18.1-1", "all",
             "cb3d7c10977dd3c811065d89e0d912196ec5e6f2551308edb0ba72e02da838d7", _L10N_LICENSE),
        _pkg("manpages-es", "4.18.1-1", "all",
             "d21e9f85e487f149ae45b5c525b2b1a70ae7fd38d4b05b47c8753042c66f4c2b", _L10N_LICENSE),
        _pkg("manpages-es-dev", "4.18.1-1", "all",
             "1c2e676050bc87ecd5b4fafa00e7365504aaaf5d64645ef9989e907e5612a322", _L10N_LICENSE),
        _pkg("manpages-fr", "4.18.1-1", "all",
             "ec29759cc0e4a44dc7719c1e32869d0060667049e584f09556f0d982b969ea33", _L10N_LICENSE),
        _pkg("manpages-fr-dev", "4.18.1-1", "all",
             "25f5a53208d92f0a69a89e349edfb3068e6e6e4e0673fe712dd0d3b0c5b1512d", _L10N_LICENSE),
        _pkg("manpages-pl", "1:4.18.1-1", "all",
             "31e518ea8331b5204d4fd0032037f96af1ba94a5afa4f0585dca1996b270cdf9", _L10N_LICENSE),
        _pkg("manpages-pl-dev", "1:4.18.1-1", "all",
             "5a365751f2d6ee2a67d03a26e44a380d59790c42bd1ca9aeb0c35264f62e80c7", _L10N_LICENSE),
        _pkg("manpages-ru", "4.18.1-1", "all",
             "5d5821dad5840652ba9c1c6b85bdc785c1fc52148a71c18fab6658c9659244c0", _L10N_LICENSE),
        _pkg("manpages-ru-dev", "4.18.1-1", "all",
             "7182289b9a0af78422e48412f149907b6d84d16c78544db97e48b6ab2562bb55", _L10N_LICENSE),
        _pkg("manpages-ja", "0.5.0.0.20221215+dfsg-1", "all",
             "4d270e9a1e83be4de0c072a110892a17dc9caa4b501257324006ac28d82c5743",
             "JM project translations: free licences as per debian/copyright"),
        _pkg("manpages-ja-dev", "0.5.0.0.20221215+dfsg-1", "all",
             "eab2ad5f14a87b3911c48c90cef92f85d0e77ca5356923f9f9fbc38a86601d1e",
             "JM project translations: free licences as per debian/copyright"),
        _pkg("coreutils", "9.1-1", "amd64",
             "61038f857e346e8500adf53a2a0a20859f4d3a3b51570cc876b153a2d51a3091",
             "GPL-3+ (GNU coreutils and its Translation Project catalogues)"),
    ]
}  # fmt: skip


def in_suite_partition(source_id: str) -> bool:
    """True iff ``source_id`` belongs to the half of each source the suite may use.

    A pure function of the identifier (salted sha256, even first 32 bits), so data builders
    can exclude the suite's half without building it. Identifiers: ``cpython-stdlib:<module>``,
    ``man-pages:<dir>/<page>`` (e.g. ``man-pages:man2/open.2``), ``gettext:<domain>:<sha256(msgid)[:16]>``.
    """
    digest = hashlib.sha256((PARTITION_SALT + source_id).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 2 == 0


def msgid_source_id(domain: str, msgid: str) -> str:
    """Identifier of a gettext message: its domain plus a hash of the English ``msgid``
    (messages are long and full of punctuation; the hash is stable and short)."""
    return f"gettext:{domain}:{hashlib.sha256(msgid.encode('utf-8')).hexdigest()[:16]}"

"""Quantization scheme names, without torch (the on-device runtime resolves them too); their layouts
per weight group are in `qat.SCHEMES`."""

from __future__ import annotations

SCHEME_NAMES = ("int8", "int4", "mixed", "int8-channel", "w8a8")
# Schemes whose runtime also rounds each matrix product's input to int8, one scale per token (the
# weights as int8-channel): integer GEMMs instead of weight-only kernels.
INT8_ACTIVATION_SCHEMES = ("w8a8",)
# The smallest-memory schemes (int4 weights): their graphs score attention one chunk of query tokens at
# a time (a third of the score memory of all heads at once, the same speed on these weights).
LOW_MEMORY_SCHEMES = ("int4", "mixed")
# The schemes whose runtime graph scores a long text's sliding layers against each query chunk's window
# (passages ~8% faster for w8a8); the graph's If costs the weight-only schemes memory (int8 +100 MB,
# mixed +35 MB peak), so they go without.
BANDED_SCHEMES = ("w8a8",)
SCHEME_ALIASES = {"e4_a8_f4_p4": "mixed", "q8_0": "int8", "q4_0": "int4"}


def resolve_scheme(scheme: str) -> str:
    """Canonical scheme name; an unknown one is a ValueError listing the choices."""
    name = SCHEME_ALIASES.get(scheme, scheme)
    if name not in SCHEME_NAMES:
        raise ValueError(
            f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEME_NAMES)} (or e4_a8_f4_p4)"
        )
    return name

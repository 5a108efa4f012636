"""Which cipher suite new segments are written with: the config's ``segment_cipher``, ``auto`` resolved.

``auto`` picks ChaCha20-Poly1305 on a CPU without AES instructions (a Raspberry Pi 4's Cortex-A72 has no
ARMv8 crypto extensions), where software AES-GCM costs several times more, and AES-256-GCM where the CPU
has them. The test is the kernel's CPU feature list: the ``aes`` flag (x86 ``flags``, ARM ``Features``)
is what OpenSSL's AES paths rely on too. Pure except for ``read_cpuinfo``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .segfile import SUITE_AES_256_GCM, SUITE_BY_NAME, SUITE_CHACHA20_POLY1305, SUITE_NAMES

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
_FEATURE_KEYS = ("flags", "features")  # x86 and ARM spell the feature line differently


def cpu_has_aes(cpuinfo: str) -> bool | None:
    """True/False from the text of ``/proc/cpuinfo``; None when it lists no CPU features at all."""
    found = False
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in _FEATURE_KEYS:
            found = True
            if "aes" in value.split():
                return True
    return False if found else None


def read_cpuinfo(path: Path = CPUINFO) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def resolve_suite(choice: str, cpuinfo: str) -> int:
    """The suite number for a ``segment_cipher`` value; ``auto`` keeps AES-256-GCM when unsure."""
    if choice != "auto":
        return SUITE_BY_NAME[choice]
    has_aes = cpu_has_aes(cpuinfo)
    return SUITE_CHACHA20_POLY1305 if has_aes is False else SUITE_AES_256_GCM


def suite_for_config(choice: str, cpuinfo_path: Path = CPUINFO) -> int:
    """``resolve_suite`` with this machine's CPU; reads ``/proc/cpuinfo`` only for ``auto``."""
    suite = resolve_suite(choice, read_cpuinfo(cpuinfo_path) if choice == "auto" else "")
    if choice == "auto":
        log.info("segment cipher auto: %s", SUITE_NAMES[suite])
    return suite

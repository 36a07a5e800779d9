"""Stable, safe and unique output file names."""

from __future__ import annotations

import re

MAX_STEM_LENGTH = 100


def safe_stem(stem: str) -> str:
    """The stem with anything but letters, digits, '-', '_' and '.' replaced by '_' (never empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return cleaned[:MAX_STEM_LENGTH] or "image"


def unique_names(stems: list[str], suffix: str = ".jpg") -> list[str]:
    """One safe file name per stem, in order; later clashes get _2, _3... (case-insensitively, for macOS)."""
    taken: set[str] = set()
    names = []
    for stem in stems:
        base = safe_stem(stem)
        candidate, counter = base, 1
        while candidate.lower() in taken:
            counter += 1
            candidate = f"{base}_{counter}"
        taken.add(candidate.lower())
        names.append(candidate + suffix)
    return names

"""Directories that appear whole or not at all.

Every finished artifact (a pruned model, a converted GGUF, the cached reference model, an
exported adapter) is written into a temporary sibling first and moved into place here, so
a crash at any point leaves the old directory or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(tmp: Path, final: Path) -> None:
    """Make the finished directory ``tmp`` appear at ``final`` in one rename.

    An existing ``final`` is moved aside first and deleted only once the new one is in
    place, so a crash at any point leaves a complete old or new directory, never half of one.
    """
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.replace(final, aside / "entry")
    os.replace(tmp, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)

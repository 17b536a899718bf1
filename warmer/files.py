"""Writing a file so that readers see the old one or the whole new one, never a part.

Shared by everything that publishes a single file (bundles, Triton group files that prune
rewrites, the store's CACHEDIR.TAG). Many-file publishing has its own batch schemes (the
store's objects, restore's staging), built on the same rule: write beside, then rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(
    destination: Path, *, mode: int = 0o644, durable: bool = False
) -> Iterator[BinaryIO]:
    """A file to write that replaces `destination` when the block ends without an error.

    It is a hidden temp file in the same directory (so the rename stays on one file system);
    `durable` syncs it before the rename, so a crash cannot publish a file whose bytes were
    not on disk yet. On an error the temp file is removed and `destination` is untouched.
    """
    fd, temp = tempfile.mkstemp(prefix=".warmer-tmp-", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, destination)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

"""A stand-in for a model server: torch.compile a model, say `ready`, then compile a new
input shape when asked (what production traffic does after a warm-up missed a shape).

    python serve_compile.py TRIGGER_FILE     (cache dirs come from the environment)
Prints `ready` after the first compile, waits for TRIGGER_FILE to exist, runs a new shape,
prints `compiled-new-shape` and then waits to be stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    import torch

    trigger = Path(sys.argv[1])
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad():
        compiled(torch.randn(4, 32))
        print("ready", flush=True)
        while not trigger.exists():
            time.sleep(0.1)
        compiled(torch.randn(7, 32))
        print("compiled-new-shape", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()

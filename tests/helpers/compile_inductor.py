"""Run a real CPU torch.compile with the example model and print Inductor's cache counters.

    python compile_inductor.py            (cache dirs come from the environment)
Prints one JSON line: {"fxgraph_cache_hit": n, "fxgraph_cache_miss": n, ...}.
"""

from __future__ import annotations

import json


def main() -> None:
    import torch
    from torch._dynamo.utils import counters

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(torch.randn(4, 32))
    print(json.dumps(dict(counters["inductor"])))


if __name__ == "__main__":
    main()

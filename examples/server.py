"""A model server's start-up with warmer: load the compile caches before `torch.compile`,
save them after it compiled, so that the next start skips the compile.

    python examples/server.py --store DIR/store --cache DIR/inductor [--source server]

The first start finds nothing (status `nothing_for_env`), compiles cold and saves the
Inductor cache as the snapshot `server@<env tag>` (add `push="REGISTRY/REPO"` to
`warmer.save` to publish it). Every later start loads it (status `loaded`) and Inductor's FX
graph cache hits. `warmer.load` never raises for a missing, mismatched or corrupt bundle: the
server starts either way, cold at worst. Prints one JSON line: the load result, Inductor's
counters and the saved ref.
"""

from __future__ import annotations

import argparse
import json
import os

import warmer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="warmer's store directory")
    parser.add_argument("--cache", required=True, help="TORCHINDUCTOR_CACHE_DIR")
    parser.add_argument("--source", default="server", help="what to load (ref, bundle, REPO:TAG)")
    args = parser.parse_args()
    # the cache roots are decided before torch is imported: Inductor reads them once
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(args.cache)

    loaded = warmer.load(args.source, store=args.store)
    if not loaded.loaded:
        print(f"starting cold: {loaded.status}: {'; '.join(loaded.reasons)}", flush=True)

    import torch
    from torch._dynamo.utils import counters

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(torch.randn(4, 32))  # the first request compiles (or loads from the cache)

    saved = None
    if not loaded.loaded:
        result = warmer.save("server", roots={"inductor": args.cache}, store=args.store, out=None)
        saved = result.snapshot.ref
    print(
        json.dumps(
            {"load": loaded.to_dict(), "inductor": dict(counters["inductor"]), "saved": saved}
        )
    )


if __name__ == "__main__":
    main()

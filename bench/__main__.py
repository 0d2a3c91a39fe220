"""``python -m bench NAME [--quick]`` or ``python -m bench all [--quick]``.

Each benchmark prints a table, writes JSON under bench/results/ and (for full
runs) refreshes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from . import common as C
from .report import write_docs

NAMES = {"compress": "compress", "ingest": "ingest", "weights": "weights", "jitter": "jitter",
         "async": "async_pipeline", "wan": "wan", "buffer": "buffer", "pixels": "pixels",
         "hil": "hil", "hil_reward": "hil_reward", "flow_sft": "flow_sft", "inference": "inference", "rlco": "rlco",
         "lora_sft": "lora_sft"}


def run_one(name: str, quick: bool) -> C.Result:
    t0 = time.monotonic()
    try:
        res = importlib.import_module(f"bench.{NAMES[name]}").run(quick=quick)
    except Exception as e:  # a broken benchmark is reported, the others still run
        res = C.Result(name, quick, error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        C.kill_all()
    res.seconds = time.monotonic() - t0
    C.print_result(res)
    path = C.save_result(res)
    print(f"  json: {path.relative_to(C.ROOT)}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=[*NAMES, "all"])
    p.add_argument("--quick", action="store_true", help="small smoke-test variants (CI)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    a = p.parse_args(argv)
    names = list(NAMES) if a.name == "all" else [a.name]
    t0 = time.monotonic()
    results = [run_one(n, a.quick) for n in names]
    total = time.monotonic() - t0
    print(f"\n{len(results)} benchmark(s) in {total:.0f} s")
    if not a.quick and not a.no_docs:
        write_docs(total if a.name == "all" else None)
        print("docs/benchmarks.md updated")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

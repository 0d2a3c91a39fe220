"""docs/benchmarks.md from the latest full result of each benchmark (bench/results/NAME.json)."""

from __future__ import annotations

import json

from . import common as C

NAMES = ["compress", "ingest", "weights", "jitter", "async", "wan", "buffer", "pixels", "hil", "hil_reward",
         "flow_sft", "inference"]

HEAD = """# Benchmarks

`bench/` holds fleetrl to the physical limits of the machine it runs on. Every
figure is a ratio against a baseline measured **in the same run on the same
machine** (absolute times on shared machines are noise). Targets come from the
Targets table of the design (`docs/architecture.md`) and GitHub issue 8.

## Reproduce

```bash
pip install torch==2.13.0 && pip install -e ".[test]"
python -m bench all              # every benchmark, ~6 min on 2 cores; rewrites this page
python -m bench ingest           # one of: compress ingest weights jitter async wan buffer pixels hil hil_reward flow_sft inference
python -m bench all --quick      # the CI smoke variants (tests/bench/test_bench_smoke.py)
```

Each run prints a table per benchmark and writes
`bench/results/NAME.json` (and a time-stamped copy): figures, baseline, ratio,
target, pass/fail, package versions and the machine. `wan` needs root, `tc`
and `iptables` (`apt-get install -y iptables iproute2`); without them it says
so and is skipped. Camera frames are rendered by MuJoCo headless
(`MUJOCO_GL=egl`; `apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgl1`;
where EGL finds no device, `MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa` with
`libosmesa6`, as for the latest `ingest` run).
"""


def documented_sections(text: str) -> dict[str, str]:
    """Each benchmark's section of the page as it stands (``### name`` up to the next heading)."""
    out: dict[str, str] = {}
    for name in NAMES:
        start = text.find(f"\n### {name}\n")
        if start < 0:
            continue
        ends = [i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i >= 0]
        out[name] = text[start + 1 : min(ends) + 1 if ends else len(text)].rstrip("\n") + "\n"
    return out


def write_docs(total_s: float | None = None) -> None:
    """Rewrite the page from the results on this machine; a benchmark with no results file here keeps its
    section as the page has it (results files are git-ignored: a clone holds none of the earlier runs)."""
    from .analysis import ANALYSIS

    page = C.ROOT / "docs" / "benchmarks.md"
    kept = documented_sections(page.read_text()) if page.exists() else {}
    out = [HEAD, "## Latest results\n"]
    machine = None
    fresh = []
    for name in NAMES:
        path = C.RESULTS / f"{name}.json"
        if not path.exists():
            out.append(kept.get(name, f"### {name}\n\nnot run yet\n"))
            continue
        fresh.append(name)
        d = json.loads(path.read_text())
        machine = machine or (d["machine"], d["versions"])
        res = C.Result(name, d["quick"], rows=[C.Row(**r) for r in d["rows"]], notes=d["notes"],
                       seconds=d["seconds"], error=d["error"])
        out.append(f"### {name}\n\n_{d['when']}, {d['seconds']:.0f} s_\n")
        if res.error:
            out.append(f"**did not run:** {res.error}\n")
        if res.rows:
            out += table_md(res) + [""]
        for n in res.notes:
            out.append(f"- {n}")
        out.append("")
    if machine:
        m, v = machine
        which = "" if len(fresh) == len(NAMES) else f" ({', '.join(fresh)})"
        out.append(f"Machine{which}: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_mb']} MB RAM, Linux {m['kernel']}; "
                   + ", ".join(f"{k} {x}" for k, x in v.items()) + "\n")
    marker = C.RESULTS / "all-seconds.json"  # results/*.json are git-ignored
    if total_s is not None:
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": round(total_s)}))
    if marker.exists():
        out.append(f"The last full `python -m bench all` took {json.loads(marker.read_text())['seconds']} s on this machine.\n")
    out.append(ANALYSIS)
    page.write_text("\n".join(out))


def table_md(res: C.Result) -> list[str]:
    return C.table_lines(res, markdown=True)

"""A real edge agent (edge_agent.daemon.Agent, unchanged but for the GL workaround below) that, on exit, also
writes its control loop's tick lateness (the product keeps the last 2000 in
``ControlLoop._period_errors``; its status only reports p99).

    python -m bench._agent_probe agent.toml out.json drain_timeout_s
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from edge_agent.daemon import Agent
from shared import config as cfgmod
from shared.logs import setup


def main() -> int:
    cfg_path, out, drain = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    setup("INFO")
    cfg = cfgmod.load(cfgmod.AgentConfig, cfg_path)
    agent = Agent(cfg, drain_timeout_s=drain)
    rc = asyncio.run(agent.run())
    c = agent.control
    out.write_text(json.dumps({"period_errors_s": list(c._period_errors), "steps": c.steps, "episodes": c.episodes,
                               "sync_wait_s": c.sync_wait_s, "rc": rc}))
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""``cloud-learner rlco``: run the RL-Co recipe with a progress display and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from shared import config as cfgmod
from shared.errors import FleetError

if TYPE_CHECKING:  # imported when used: the config's limits come from shared.policy (torch), and every
    from .config import RLCoConfig  # cloud-learner command (robots add, ...) imports this module


def load_config(path: Path) -> RLCoConfig:
    """rlco.toml, checked (ConfigError naming the bad field); relative paths resolve against the file."""
    from .config import RLCoConfig

    return cfgmod.load(RLCoConfig, path)


class RichProgress:
    """One progress bar per phase (datasets, Stage I, Stage II, each evaluation) with its latest metrics."""

    KEYS = ("loss", "sft_sim", "sft_real", "sim_success", "reward", "env_steps_per_s", "real_success")

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, what: str, done: int, total: int, metrics: dict[str, float]) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=max(total, 1), info="")
        info = "  ".join(f"{k} {metrics[k]:.3g}" for k in self.KEYS if k in metrics)
        self.bar.update(self.tasks[what], completed=done, total=max(total, 1), info=info)


def summary_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"RL-Co: {summary['run_dir']}")
    for col in ("stage", "finished", "real success", "episodes", "evaluated via", "last training metrics"):
        t.add_column(col)
    names = {"sft": "Stage I (SFT co-training)", "rl": "Stage II (RL + beta SFT real)"}
    for row in summary["stages"]:
        train = row.get("train") or {}
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in train.items() if k in RichProgress.KEYS)
        t.add_row(names[row["stage"]], "yes" if row["done"] else "no",
                  f"{row['success']:.0%}" if "success" in row else "-", str(row.get("episodes", "-")),
                  row.get("via", "-"), metrics or "-")
    return t


def rlco(
    config: Path = typer.Option(..., "--config", "-c", help="rlco.toml (every key optional; see docs/rlco.md)"),
    stage: Optional[str] = typer.Option(None, "--stage", help=(
        "run one stage only: sft (Stage I, making or reusing the datasets), rl (Stage II, needs sft), "
        "eval (evaluate the finished stages on the real twin)")),
    resume: bool = typer.Option(False, "--resume", help=(
        "continue a stopped or killed run in run_dir: finished stages are kept, the interrupted one continues "
        "from its last checkpoint, datasets are reused")),
) -> None:
    """RL-Co, sim-real co-training: Stage I SFT on alpha*D_sim + (1-alpha)*D_real, Stage II RL in
    simulation regularised by beta*SFT(D_real), then success on the real twin after each stage.

    Datasets are versioned Parquet files under datasets.dir, reused by any run with the same settings.
    Progress shows each phase; the end prints a summary table (also run_dir/summary.json)."""
    from rich.console import Console

    from .stages import Recipe

    try:
        cfg = load_config(config)
        with RichProgress() as progress:
            summary = Recipe(cfg, progress).run(stage=stage, resume=resume)
    except FleetError as e:
        typer.echo(f"cloud-learner rlco: {e}", err=True)
        raise typer.Exit(2) from None
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: wide enough that no cell wraps
        console = Console(width=160)
    console.print(summary_table(summary))

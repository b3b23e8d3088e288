#!/usr/bin/env python
"""Compare pretraining runs: held-out MLM/NSP accuracy of several output folders, as a PNG and a markdown table.

    python scripts/compare_runs.py outputs/run-a outputs/run-b --labels "lr 1e-3" "lr 2e-3" \
        --png docs/tuning.png --markdown docs/tuning.md

Each folder is a `pretrain.py --output-dir` (its metrics.jsonl is read; a run stopped early counts with the evals it
has). The plot puts the epoch (training pairs seen / training pairs) on the x axis, so runs with different batch
sizes line up by the data they have seen; ``--x-axis step`` puts optimizer steps there instead, and ``--x-axis
share`` the share of each run's steps done (runs given the same time at different speeds line up). Exit codes: 0 done, 2 a folder without eval records (one line on stderr).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.atomic import write_text  # noqa: E402
from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402
from minibert_hf.metrics_log import eval_records, save_figure  # noqa: E402


def markdown_table(runs: list[tuple[str, list[dict]]]) -> str:
    lines = ["| run | steps | epochs | MLM accuracy | at [MASK] | NSP accuracy | MLM loss | perplexity |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, evals in runs:
        last = evals[-1]
        at_mask = last.get("eval_mlm_accuracy_at_mask")  # runs older than the metric have none
        lines.append(f"| {label} | {last['step']} | {last['epoch']:.2f} | {last['eval_mlm_accuracy']:.1%} | "
                     f"{'' if at_mask is None else f'{at_mask:.1%}'} | {last['eval_nsp_accuracy']:.1%} | "
                     f"{last['eval_mlm_loss']:.3f} | {last['eval_perplexity']:.0f} |")
    return "\n".join(lines) + "\n"


X_LABELS = {"epoch": "epochs (training pairs seen / pairs)", "step": "optimizer steps",
            "share": "share of the run's steps"}


def x_values(evals: list[dict], x_axis: str) -> list[float]:
    """Where each eval record goes on the x axis: its epoch, its step, or its step over the run's last step."""
    if x_axis == "share":
        return [r["step"] / evals[-1]["step"] for r in evals]
    return [r[x_axis] for r in evals]


def plot(runs: list[tuple[str, list[dict]]], png: Path, x_axis: str = "epoch") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("eval_mlm_accuracy", "MLM accuracy"), ("eval_nsp_accuracy", "NSP accuracy"),
              ("eval_mlm_loss", "MLM loss"))
    for axis, (key, title) in zip(axes, panels):
        for number, (label, evals) in enumerate(runs):
            style = ("-", "--", ":")[number // 10 % 3]  # the colour cycle has 10 colours
            axis.plot(x_values(evals, x_axis), [r[key] for r in evals], marker="o", linestyle=style,
                      markersize=3, label=label)
        axis.set(xlabel=X_LABELS[x_axis], title=f"held-out {title}")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="compare_runs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretrain.py output folders")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: the folder names)")
    parser.add_argument("--png", type=Path, help="write the accuracy/loss curves here")
    parser.add_argument("--markdown", type=Path, help="write the table here (it is always printed)")
    parser.add_argument("--x-axis", choices=tuple(X_LABELS), default="epoch",
                        help="what the plot's x axis counts: epochs (runs of other batch sizes line up by data "
                             "seen), steps (runs whose training files differ in size line up) or the share of "
                             "each run's steps (runs given the same time at different speeds line up)")
    args = parser.parse_args(argv)
    labels = args.labels or [folder.name for folder in args.runs]
    if len(labels) != len(args.runs):
        fail(f"--labels: {len(labels)} names for {len(args.runs)} runs")
    runs = [(label, eval_records(folder)) for label, folder in zip(labels, args.runs)]
    table = markdown_table(runs)
    print(table, end="")
    if args.markdown:
        write_text(args.markdown, table)
    if args.png:
        plot(runs, args.png, args.x_axis)
    return 0


if __name__ == "__main__":
    run_cli(main)

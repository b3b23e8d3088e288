#!/usr/bin/env python
"""Render the benchmark report from bench/results.json: results.md (tables, machine, commands) and results.png.

    python scripts/bench_report.py            # re-render bench/results.md and bench/results.png
    python scripts/bench_report.py --output-dir DIR

scripts/bench.py measures and records each run in results.json, then calls write_reports; this file only renders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/bench_report.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_reports(results: dict, output_dir) -> None:
    """results.md and results.png of every run recorded in ``results``, written atomically."""
    from minibert_hf.atomic import write_text

    output_dir = Path(output_dir)
    write_text(output_dir / "results.md", render_markdown(results))
    render_png(results, output_dir / "results.png")


def phase_rate(prep: dict, seconds_key: str) -> str:
    """MB/s of one phase of a timed preparation (raw MB / that phase's seconds), or n/a when it was not timed."""
    seconds = prep.get(seconds_key)
    if not seconds or "raw_mb" not in prep:
        return "n/a"
    return f"{prep['raw_mb'] / seconds:.2f}"


def render_markdown(results):
    lines = ["# MiniBERT vs transformers BertForPreTraining", ""]
    runs = results.get("runs", {})
    if not runs:
        return "\n".join(lines + ["(no runs)", ""])
    lines += ["Training step = forward + backward + clip-grad-norm 1.0 + AdamW step, on the same batches, A/B "
              "alternating after warm-up. Speed-up = median over pairs of HF time / our time. FLOP ratio = HF's "
              "FLOPs per step / ours, counted from the batch shapes (what the algorithm alone buys; a speed-up below "
              "it means our kernels run less efficiently than HF's). Achieved = FLOPs per step / time per step, as a "
              "share of a large matrix product timed in the same process (fp32 on CPU, bf16 on CUDA). Memory = peak "
              "RSS growth during training steps in a fresh process (CUDA: peak allocated device memory growth).", ""]
    lines += ["| run | ours ms/step | HF ms/step | ours tokens/s | HF tokens/s | train speed-up | "
              "FLOP ratio | achieved GFLOP/s (ours / HF) | share of matmul peak (ours / HF) | "
              "inference ms (ours / HF) | inference speed-up | peak mem MB (ours / HF) | held-out loss end (ours / HF) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        t, inf, mem = run["training"], run.get("inference", {}), run.get("memory") or {}
        mem_text = (f"{mem['ours']['peak_growth_mb']:.0f} / {mem['hf']['peak_growth_mb']:.0f}"
                    if mem else "n/a")
        lines.append(
            f"| {name} | {t['ours']['median_ms']:.0f} | {t['hf']['median_ms']:.0f} | "
            f"{t['ours']['tokens_per_second']:.0f} | {t['hf']['tokens_per_second']:.0f} | "
            f"**{t['speedup_median_of_pairs']:.2f}x** | {flop_cells(t)} | "
            f"{inf.get('ours_median_ms', float('nan')):.0f} / {inf.get('hf_median_ms', float('nan')):.0f} | "
            f"{inf.get('speedup_median_of_pairs', float('nan')):.2f}x | {mem_text} | "
            f"{t['ours']['held_out_loss_end']:.3f} / {t['hf']['held_out_loss_end']:.3f} |")
    lines += ["", "## Data", "", "Prep MB/s = raw text MB / seconds of the whole preparation, which is two phases "
              "one after the other: training the tokenizer on the corpus, then pairs, masks and CSVs (what a "
              "preparation with `--tokenizer DIR` runs alone). Each phase's own rate is the raw MB over its seconds.",
              "", "| run | prep MB/s | tokenizer training MB/s | pairs, masks, CSVs MB/s | prep MB (corpus x repeat) | "
              "prep peak RSS growth MB (main / largest worker) | loader batches/s (collate_batch) | "
              "loader batches/s (collate + DynamicMasker) | real / padded tokens per batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        prep, loader, t = run.get("data_prep") or {}, run.get("loader", {}), run["training"]
        memory = (f"{prep['peak_rss_growth_mb']:.0f} / {prep['largest_child_peak_rss_mb']:.0f}"
                  if "peak_rss_growth_mb" in prep else "n/a")
        lines.append(
            f"| {name} | {prep.get('mb_per_second', 'n/a')} | {phase_rate(prep, 'seconds_tokenizer')} | "
            f"{phase_rate(prep, 'seconds_pairs')} | {prep.get('raw_mb', 'n/a')} (x{prep.get('repeat', 1)}) | "
            f"{memory} | {loader.get('collate_batch_batches_per_second', 'n/a')} | "
            f"{loader.get('dynamic_masking_batches_per_second', 'n/a')} | "
            f"{t['real_tokens_per_batch_mean']:.0f} / {t['padded_tokens_per_batch_mean']:.0f} |")
    lines += ["", "## Runs", ""]
    for name, run in runs.items():
        m, t = run["machine"], run["training"]
        lines += [f"### {name}", "",
                  f"- command: `{run['command']}`",
                  f"- when: {run['timestamp']}",
                  f"- machine: {m['cpu']} ({m['cpu_flags']}), {m['logical_cpus']} logical CPUs, "
                  f"{m['torch_threads']} torch threads; load average at start {m['load_average_start']}, "
                  f"at end {m.get('load_average_end')}",
                  f"- software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
                  f"{m['platform']}",
                  f"- model: {run['config']}",
                  f"- data: {run['data']}",
                  f"- training: {t['steps_each']} measured steps each after {t['warmup_each']} warm-up; speed-up "
                  f"over pairs min {t['speedup_min_of_pairs']:.2f}x, median {t['speedup_median_of_pairs']:.2f}x, "
                  f"max {t['speedup_max_of_pairs']:.2f}x; train loss mean of last 5 steps: ours "
                  f"{t['ours']['train_loss_mean_last5']:.3f}, HF {t['hf']['train_loss_mean_last5']:.3f}; "
                  f"held-out batch loss start → end: ours {t['ours']['held_out_loss_start']:.3f} → "
                  f"{t['ours']['held_out_loss_end']:.3f}, HF {t['hf']['held_out_loss_start']:.3f} → "
                  f"{t['hf']['held_out_loss_end']:.3f}",
                  f"- weights: {run['weights']}", ""]
        if run.get("matmul_peak"):
            peak = run["matmul_peak"]
            lines.insert(len(lines) - 1, f"- matrix-product peak ({peak['size']}x{peak['size']}, {peak['dtype']}): "
                                         f"median {peak['gflops_median']:.0f} GFLOP/s, max {peak['gflops_max']:.0f}"
                                         + (f"; data sheet bf16 {peak['datasheet_bf16_tflops']} TFLOP/s"
                                            if peak.get("datasheet_bf16_tflops") else ""))
        if run.get("inference") and run["weights"].startswith("same"):
            lines.insert(len(lines) - 1, f"- inference logits max |ours - HF| on real tokens, same weights: "
                                         f"{run['inference']['logits_max_abs_diff_real_tokens']:.2e}")
    return "\n".join(lines) + "\n"


def flop_cells(training):
    """The FLOP-ratio, achieved-GFLOP/s and share-of-peak cells (n/a for runs recorded before they existed)."""
    if "flop_ratio" not in training:
        return "n/a | n/a | n/a"
    ours, hf = training["ours"], training["hf"]
    return (f"{training['flop_ratio']:.2f}x | {ours['achieved_gflops']:.0f} / {hf['achieved_gflops']:.0f} | "
            f"{ours['share_of_peak']:.0%} / {hf['share_of_peak']:.0%}")


def render_png(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minibert_hf.metrics_log import save_figure

    runs = results.get("runs", {})
    names = list(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.38
    xs = range(len(names))
    panels = [
        ("training tokens/s (higher is better)",
         [runs[n]["training"]["ours"]["tokens_per_second"] for n in names],
         [runs[n]["training"]["hf"]["tokens_per_second"] for n in names]),
        ("inference forward ms, full logits (lower is better)",
         [runs[n].get("inference", {}).get("ours_median_ms", 0) for n in names],
         [runs[n].get("inference", {}).get("hf_median_ms", 0) for n in names]),
        ("peak training memory growth MB (lower is better)",
         [(runs[n].get("memory") or {}).get("ours", {}).get("peak_growth_mb", 0) for n in names],
         [(runs[n].get("memory") or {}).get("hf", {}).get("peak_growth_mb", 0) for n in names]),
    ]
    for ax, (title, ours, hf) in zip(axes, panels):
        ax.bar([x - width / 2 for x in xs], ours, width, label="MiniBERT")
        ax.bar([x + width / 2 for x in xs], hf, width, label="HF BertForPreTraining (sdpa)")
        ax.set_xticks(list(xs), names)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for n_index, n in enumerate(names):
        speedup = runs[n]["training"]["speedup_median_of_pairs"]
        top = max(panels[0][1][n_index], panels[0][2][n_index])
        axes[0].annotate(f"{speedup:.2f}x", (n_index, top), ha="center", va="bottom", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    from minibert_hf.cli import ArgumentParser
    from minibert_hf.errors import MiniBertInputError

    parser = ArgumentParser(prog="bench_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="bench", help="the folder holding results.json")
    args = parser.parse_args(argv)
    path = Path(args.output_dir) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MiniBertInputError(f"cannot read the results ({error.__class__.__name__})", file=path) from None
    write_reports(results, args.output_dir)
    print(f"wrote {Path(args.output_dir) / 'results.md'} and results.png from {len(results.get('runs', {}))} runs")
    return 0


if __name__ == "__main__":
    from minibert_hf.cli import run_cli

    run_cli(main)

#!/usr/bin/env python
"""Does pretraining pay off? Fine-tune a model folder and the same architecture from random weights, side by side.

    python scripts/compare_finetuning.py --model outputs/minibert-default/final \
        --learning-rates 3e-4 1e-3 --seeds 0 1 2 --markdown docs/finetuning.md
    python scripts/compare_finetuning.py --from-json seed0.json seed1.json --markdown docs/finetuning.md

Each side (pretrained, from scratch) is fine-tuned with every learning rate and seed on the same data (default:
Rotten Tomatoes, split by movie) for the same epochs; each side is then reported at its best learning rate (the
highest mean held-out accuracy over the seeds; a tie goes to the lower rate), with the mean and the spread
(min-max) over the seeds.
``--from-json`` tables the runs that earlier calls wrote with ``--results-json`` (e.g. one process per seed) instead
of fine-tuning again. Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, run_cli  # noqa: E402

SIDES = (("pretrained", False), ("from scratch", True))


def summarise(runs: list[dict]) -> list[dict]:
    """Per side and learning rate: mean, min and max accuracy and macro-F1 over the seeds."""
    rows = []
    for side, _ in SIDES:
        for lr in sorted({r["learning_rate"] for r in runs if r["side"] == side}):
            group = [r for r in runs if r["side"] == side and r["learning_rate"] == lr]
            accuracy = [r["accuracy"] for r in group]
            rows.append({"side": side, "learning_rate": lr, "seeds": len(group), "accuracy": statistics.fmean(accuracy),
                         "accuracy_min": min(accuracy), "accuracy_max": max(accuracy),
                         "macro_f1": statistics.fmean(r["macro_f1"] for r in group)})
    return rows


def markdown(rows: list[dict], runs: list[dict], title: str) -> str:
    best = {side: max((r for r in rows if r["side"] == side), key=lambda r: r["accuracy"]) for side, _ in SIDES}
    lines = [f"# {title}", "", "| model | best learning rate | held-out accuracy, mean (min-max) | macro-F1 |",
             "|---|---:|---:|---:|"]
    for side, _ in SIDES:
        r = best[side]
        lines.append(f"| {side} | {r['learning_rate']:g} | **{r['accuracy']:.1%}** ({r['accuracy_min']:.1%}-"
                     f"{r['accuracy_max']:.1%}) | {r['macro_f1']:.3f} |")
    gap = best["pretrained"]["accuracy"] - best["from scratch"]["accuracy"]
    lines += ["", f"Pretrained minus from scratch, each at its best learning rate: **{100 * gap:+.1f} points** "
                  f"(mean of {best['pretrained']['seeds']} seeds).", "", "Every setting:", "",
              "| model | learning rate | seeds | accuracy mean (min-max) | macro-F1 |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['learning_rate']:g} | {r['seeds']} | {r['accuracy']:.1%} "
                     f"({r['accuracy_min']:.1%}-{r['accuracy_max']:.1%}) | {r['macro_f1']:.3f} |")
    settings = runs[0]["settings"]
    splits = ", ".join(sorted({f"seed {r['settings']['seed']}: {r['num_train']} train / {r['num_test']} held out"
                               for r in runs}))  # the seed also draws the split
    lines += ["", f"Data: {runs[0]['dataset']} ({splits}); "
                  f"{runs[0]['epochs']:.0f} epochs, batch {settings['batch_size']}, dropout {settings['dropout']}, "
                  f"classifier pooling {settings['pooling']}, max length {settings['max_length']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = ArgumentParser(prog="compare_finetuning.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pretrained model folder (or Hub repo id)")
    parser.add_argument("--from-json", nargs="+", help="table these --results-json files instead of fine-tuning")
    parser.add_argument("--dataset", default="rotten_tomatoes", help="'rotten_tomatoes' or a text,label CSV")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[3e-4, 1e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pooling", default=None, help="cls or mean (default: the model's classifier_pooling)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--results-json", help="write every run's result here")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.from_json):
        parser.error("give --model (fine-tune) or --from-json (table earlier runs), not both or neither")

    import torch
    from transformers.utils import logging as hf_logging

    from minibert_hf.atomic import write_text
    from minibert_hf.errors import MiniBertInputError
    from minibert_hf.finetuning import check_options, finetune
    from minibert_hf.finetuning_data import load_csv_dataset, load_rotten_tomatoes
    from minibert_hf.model_folder import check_model_folder

    runs = []
    for path in args.from_json or []:
        try:
            runs += json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MiniBertInputError(f"cannot read fine-tuning results ({error.__class__.__name__})",
                                     file=path) from None
    for lr in args.learning_rates if args.model else []:
        check_options(epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr, dropout=args.dropout,
                      pooling=args.pooling)
    if args.model and os.path.exists(args.model):
        check_model_folder(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for seed in args.seeds if args.model else []:
        data = (load_rotten_tomatoes(seed=seed) if args.dataset == "rotten_tomatoes"
                else load_csv_dataset(args.dataset, seed=seed))
        for side, scratch in SIDES:
            for lr in args.learning_rates:
                result = finetune(args.model, data, from_scratch=scratch, epochs=args.epochs,
                                  batch_size=args.batch_size, learning_rate=lr, dropout=args.dropout,
                                  pooling=args.pooling, seed=seed, log=None)
                runs.append({"side": side, **result.to_dict(), "learning_rate": lr})
                print(f"{side:>12}  lr {lr:g}  seed {seed}: accuracy {result.accuracy:.4f}  "
                      f"macro-F1 {result.macro_f1:.4f}  ({result.train_seconds:.0f}s)", flush=True)
    table = markdown(summarise(runs), runs, "Fine-tuning: pretrained vs the same architecture from random weights")
    print(table, end="")
    if args.markdown:
        write_text(args.markdown, table)
    if args.results_json:
        write_text(args.results_json, json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)

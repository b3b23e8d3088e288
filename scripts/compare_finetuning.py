#!/usr/bin/env python
"""Does pretraining pay off? Fine-tune a model folder and the same architecture from random weights, side by side.

    python scripts/compare_finetuning.py --model outputs/minibert-default/final \
        --learning-rates 3e-4 1e-3 --seeds 0 1 2 --markdown docs/finetuning.md
    python scripts/compare_finetuning.py --from-json seed0.json seed1.json --markdown docs/finetuning.md

Each side (pretrained, from scratch) is fine-tuned with every learning rate, dropout and seed on the same data
(default: Rotten Tomatoes, split by movie; with --task token-classification, CoNLL-2003) for the same epochs; each
side is then reported at its best setting (the highest mean held-out accuracy, or entity F1 for token
classification, over the seeds; a tie goes to the lower rate, then the lower dropout), with the mean and the spread
(min-max) over the seeds. ``--dropouts 0 0.1`` sweeps dropout too: the "mini" preset pretrains without it.
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


def read_runs(path) -> list[dict]:
    """The runs a ``--results-json`` file holds, checked: a non-empty list of results, each with its side, learning
    rate and settings (``finetune.py --results-json`` writes one result, not this)."""
    from minibert_hf.errors import MiniBertInputError

    try:
        runs = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MiniBertInputError(f"cannot read fine-tuning results ({error.__class__.__name__})", file=path) from None
    sides = {side for side, _ in SIDES}
    if not (isinstance(runs, list) and runs and all(
            isinstance(run, dict) and run.get("side") in sides and "learning_rate" in run
            and isinstance(run.get("settings"), dict) and "dropout" in run["settings"] for run in runs)):
        raise MiniBertInputError("not a compare_finetuning.py --results-json file (expected a list of runs, each "
                                 "with side, learning_rate and settings)", file=path)
    return runs


def headline(runs: list[dict]) -> str:
    """The score that ranks runs: accuracy for text classification, entity F1 for token classification."""
    return "f1" if runs[0].get("task") == "token-classification" else "accuracy"


def seeds_text(count: int) -> str:
    return "one seed" if count == 1 else f"mean of {count} seeds"


def setting(run: dict) -> tuple[float, float]:
    """What a sweep varies besides the seed: (learning rate, dropout)."""
    return run["learning_rate"], run["settings"]["dropout"]


def summarise(runs: list[dict]) -> list[dict]:
    """Per side, learning rate and dropout: mean, min and max of the headline score over the seeds, and the other
    scores' means."""
    key = headline(runs)
    rows = []
    for side, _ in SIDES:
        for lr, dropout in sorted({setting(r) for r in runs if r["side"] == side}):
            group = [r for r in runs if r["side"] == side and setting(r) == (lr, dropout)]
            score = [r[key] for r in group]
            rows.append({"side": side, "learning_rate": lr, "dropout": dropout, "seeds": len(group),
                         "score": statistics.fmean(score),
                         "score_min": min(score), "score_max": max(score),
                         "second": statistics.fmean(r["accuracy" if key == "f1" else "macro_f1"] for r in group)})
    return rows


def markdown(rows: list[dict], runs: list[dict], title: str) -> str:
    key = headline(runs)
    name, second = ("entity F1", "tag accuracy") if key == "f1" else ("accuracy", "macro-F1")
    best = {side: max((r for r in rows if r["side"] == side), key=lambda r: r["score"]) for side, _ in SIDES}
    lines = [f"# {title}", "", f"| model | best learning rate | dropout | held-out {name}, mean (min-max) | "
             f"{second} |", "|---|---:|---:|---:|---:|"]
    for side, _ in SIDES:
        r = best[side]
        lines.append(f"| {side} | {r['learning_rate']:g} | {r['dropout']:g} | **{r['score']:.1%}** "
                     f"({r['score_min']:.1%}-{r['score_max']:.1%}) | {r['second']:.3f} |")
    gap = round(100 * (best["pretrained"]["score"] - best["from scratch"]["score"]), 1) or 0.0  # no "-0.0"
    lines += ["", f"Pretrained minus from scratch, each at its best setting: **{gap:+.1f} points** "
                  f"({seeds_text(best['pretrained']['seeds'])}).", "", "Every setting:", "",
              f"| model | learning rate | dropout | seeds | {name} mean (min-max) | {second} |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['learning_rate']:g} | {r['dropout']:g} | {r['seeds']} | {r['score']:.1%} "
                     f"({r['score_min']:.1%}-{r['score_max']:.1%}) | {r['second']:.3f} |")
    settings = runs[0]["settings"]
    splits = ", ".join(sorted({f"seed {r['settings']['seed']}: {r['num_train']} train / {r['num_validation']} "
                               f"validation / {r['num_test']} held out" for r in runs}))  # the seed draws the split
    lines += ["", f"Data: {runs[0]['dataset']} ({splits}); "
                  f"{settings.get('epochs', runs[0]['epochs']):g} epochs (the best on validation kept), batch "
                  f"{settings['batch_size']}, classifier pooling {settings['pooling']}, "
                  f"max length {settings['max_length']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = ArgumentParser(prog="compare_finetuning.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pretrained model folder (or Hub repo id)")
    parser.add_argument("--from-json", nargs="+", help="table these --results-json files instead of fine-tuning")
    parser.add_argument("--task", default="sequence-classification",
                        help="sequence-classification (default) or token-classification")
    parser.add_argument("--dataset", default=None, help="as finetune.py's --dataset (default: rotten_tomatoes, or "
                        "conll2003 for token classification)")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[3e-4, 1e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dropouts", "--dropout", nargs="+", type=float, default=[0.1],
                        help="hidden, attention and classifier dropout while fine-tuning; several are swept like "
                        "the learning rates")
    parser.add_argument("--pooling", default=None, help="cls or mean (default: the model's classifier_pooling)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--results-json", help="write every run's result here")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.from_json):
        parser.error("give --model (fine-tune) or --from-json (table earlier runs), not both or neither")

    import torch
    from transformers.utils import logging as hf_logging

    from minibert_hf.atomic import write_json, write_text
    from minibert_hf.errors import MiniBertInputError
    from minibert_hf.finetuning import check_options, finetune
    from minibert_hf.finetuning_data import load_task_data
    from minibert_hf.model_folder import check_model_folder

    runs = []
    for path in args.from_json or []:
        runs += read_runs(path)
    if args.from_json and {run["side"] for run in runs} != {side for side, _ in SIDES}:
        raise MiniBertInputError("--from-json needs runs of both sides (pretrained and from scratch), found only "
                                 f"{', '.join(sorted({run['side'] for run in runs}))}", file=args.from_json[-1])
    sweep = [(lr, dropout) for lr in args.learning_rates for dropout in args.dropouts] if args.model else []
    for lr, dropout in sweep:
        check_options(epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr, dropout=dropout,
                      pooling=args.pooling, task=args.task)
    if args.model and os.path.exists(args.model):
        check_model_folder(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for seed in args.seeds if args.model else []:
        data = load_task_data(args.task, args.dataset, seed=seed)
        for side, scratch in SIDES:
            for lr, dropout in sweep:
                result = finetune(args.model, data, from_scratch=scratch, epochs=args.epochs,
                                  batch_size=args.batch_size, learning_rate=lr, dropout=dropout,
                                  pooling=args.pooling, seed=seed, log=None)
                runs.append({"side": side, **result.to_dict(), "learning_rate": lr})
                score = f"entity F1 {result.f1:.4f}  " if result.f1 is not None else ""
                print(f"{side:>12}  lr {lr:g}  dropout {dropout:g}  seed {seed}: {score}"
                      f"accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  "
                      f"({result.train_seconds:.0f}s)", flush=True)
    what = "token classification" if headline(runs) == "f1" else "text classification"
    table = markdown(summarise(runs), runs, f"Fine-tuning ({what}): pretrained vs the same architecture from random "
                                            "weights")
    print(table, end="")
    if args.markdown:
        write_text(args.markdown, table)
    if args.results_json:
        write_json(args.results_json, runs)
    return 0


if __name__ == "__main__":
    run_cli(main)

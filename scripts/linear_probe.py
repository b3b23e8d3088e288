#!/usr/bin/env python
"""How much of a task an encoder's features hold before fine-tuning: logistic regression on them, frozen.

    python scripts/linear_probe.py --model outputs/minibert-default/final          # Rotten Tomatoes, seeds 0 1 2
    python scripts/linear_probe.py --model DIR --dataset reviews.csv --seeds 0 --C 0.1

For each seed the data is split exactly as `finetune.py --seed S` splits it. The vector fine-tuning's classifier
would read (the model's pooling of its last layer) is computed for every text with the encoder frozen, once from
the pretrained weights and once from random weights of the same architecture (seeded as `finetune.py
--from-scratch --seed S`), and a logistic regression (minibert_hf/baselines.py) trains on the training part with
its validation share and is scored on the held-out texts. Seconds per seed, against about a minute for a
fine-tuning run. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="linear_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder or Hub id (as finetune.py --model)")
    parser.add_argument("--dataset", default="rotten_tomatoes",
                        help="'rotten_tomatoes' (default) or a CSV file with text,label columns, as finetune.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no split")
    parser.add_argument("--C", type=float, default=1.0, help="inverse strength of the L2 penalty (scikit-learn's C)")
    parser.add_argument("--pooling", default=None, help="cls or mean instead of the model's own (as finetune.py)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--results-json", default=None, help="also write every seed's results here")
    args = parser.parse_args(argv)
    if args.C <= 0:
        fail(f"--C must be positive, got {args.C}")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be at least 1, got {args.threads}")

    from dataclasses import asdict

    from transformers.utils import logging as hf_logging

    from minibert_hf.baselines import linear_probe, seeds_summary
    from minibert_hf.finetuning import check_options
    from minibert_hf.finetuning_data import load_task_data
    from minibert_hf.model_folder import check_model_folder

    check_options(test_fraction=args.test_fraction, pooling=args.pooling, max_length=args.max_length)
    if os.path.exists(args.model):  # a bad local folder is reported before any data is fetched
        check_model_folder(args.model)
    hf_logging.set_verbosity_error()  # the head fine-tuning would add is "newly initialised": not news here
    hf_logging.disable_progress_bar()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        data = load_task_data("sequence-classification", args.dataset, test_fraction=args.test_fraction, seed=seed)
        row = {"seed": seed, "C": args.C}
        for kind, from_scratch in (("pretrained", False), ("from_scratch", True)):
            result = linear_probe(args.model, data, from_scratch=from_scratch, seed=seed, C=args.C,
                                  pooling=args.pooling, max_length=args.max_length)
            row[kind] = asdict(result)
        results.append(row)
        print(f"seed {seed}: pretrained accuracy {row['pretrained']['accuracy']:.4f}, from random weights "
              f"{row['from_scratch']['accuracy']:.4f}  ({result.num_train} train, {result.num_test} held-out, "
              f"{result.num_features} features)", flush=True)
    for kind, shown in (("pretrained", "pretrained"), ("from_scratch", "from random weights")):
        print(f"linear probe (C {args.C:g}), {shown}: {seeds_summary([r[kind]['accuracy'] for r in results])}")
    if args.results_json:
        from minibert_hf.atomic import write_json

        write_json(args.results_json, results)
    return 0


if __name__ == "__main__":
    run_cli(main)

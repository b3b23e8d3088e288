#!/usr/bin/env python
"""The reference without a neural model: TF-IDF + logistic regression, on the split fine-tuning uses.

    python scripts/tfidf_baseline.py                          # Rotten Tomatoes, seeds 0 1 2 (split by movie)
    python scripts/tfidf_baseline.py --dataset reviews.csv --seeds 0
    python scripts/tfidf_baseline.py --tokenizer outputs/minibert-default/final   # a model's pieces, not words

For each seed the data is split exactly as `finetune.py --seed S` splits it; the classifier trains on the training
part with its validation share and is scored on the same held-out texts (scikit-learn's TfidfVectorizer and
LogisticRegression defaults, written in torch: minibert_hf/baselines.py). Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="tfidf_baseline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="rotten_tomatoes",
                        help="'rotten_tomatoes' (default) or a CSV file with text,label columns, as finetune.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no split")
    parser.add_argument("--C", type=float, default=1.0, help="inverse strength of the L2 penalty (scikit-learn's C)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (a model folder is one): count its "
                        "pieces (those with a letter or digit) instead of words")
    parser.add_argument("--results-json", default=None, help="also write every seed's result here")
    args = parser.parse_args(argv)
    if args.C <= 0:
        fail(f"--C must be positive, got {args.C}")

    from dataclasses import asdict

    from minibert_hf.baselines import seeds_summary, tfidf_logistic_regression, tokenizer_pieces, words
    from minibert_hf.finetuning import check_options
    from minibert_hf.finetuning_data import load_task_data

    check_options(test_fraction=args.test_fraction)
    analyzer = words
    if args.tokenizer:
        from minibert_hf.tokenizer import load_tokenizer

        analyzer = tokenizer_pieces(load_tokenizer(args.tokenizer))
    results = []
    for seed in args.seeds:
        data = load_task_data("sequence-classification", args.dataset, test_fraction=args.test_fraction, seed=seed)
        result = tfidf_logistic_regression(data, C=args.C, analyzer=analyzer)
        results.append({"seed": seed, "C": args.C, "features": "pieces" if args.tokenizer else "words",
                        **asdict(result)})
        print(f"seed {seed}: accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  ({result.num_train} "
              f"train, {result.num_test} held-out, {result.num_features} {results[-1]['features']})", flush=True)
    print(f"TF-IDF + logistic regression (C {args.C:g}): {seeds_summary([r['accuracy'] for r in results])}")
    if args.results_json:
        from minibert_hf.atomic import write_json

        write_json(args.results_json, results)
    return 0


if __name__ == "__main__":
    run_cli(main)

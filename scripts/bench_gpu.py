"""The GPU benchmark set in one command (``make bench-gpu``): scripts/bench.py on CUDA in bf16 with SDPA, at the
bench shape and at bert-base shape, each eager and under torch.compile, recorded with the CPU runs in
bench/results.json (names ``cuda-bf16``, ``bert-base-cuda-bf16``, ``...-compile``), with tokens/s and MFU against
the GPU's bf16 data-sheet peak (``bench_flops.GPU_BF16_PEAK_TFLOPS``).

    python scripts/bench_gpu.py                  # every run of the set
    python scripts/bench_gpu.py --steps 30 --output-dir bench

On a machine without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/bench_gpu.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (extra bench.py arguments) per run; every run adds --device cuda --bf16 and the shared options
RUNS = (
    ("--shape", "bench"),
    ("--shape", "bench", "--compile"),
    ("--shape", "bert-base"),
    ("--shape", "bert-base", "--compile"),
)


def bench_commands(steps: int, output_dir: str, csv: str | None = None, device: str = "cuda") -> list[list[str]]:
    """The bench.py argument lists of the GPU set."""
    shared = ["--device", device, "--bf16", "--fused-adamw", "--steps", str(steps), "--warmup", "5",
              "--no-prep-bench", "--output-dir", output_dir, *(["--csv", csv] if csv else [])]
    return [[*run, *shared] for run in RUNS]


def main(argv=None) -> int:
    import torch

    from minibert_hf.cli import ArgumentParser

    parser = ArgumentParser(prog="bench_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured training steps per model and run")
    parser.add_argument("--output-dir", default="bench", help="where results.json/.md/.png go")
    parser.add_argument("--csv", help="a prepared pretraining CSV (vocab 30522) for a machine that cannot fetch the "
                                      "default corpus (default: bench.py's own)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"bench-gpu: no CUDA device here (torch {torch.__version__}); nothing measured")
        return 0
    import bench

    for command in bench_commands(args.steps, args.output_dir, args.csv):
        print(f"[bench-gpu] python scripts/bench.py {' '.join(command)}", flush=True)
        bench.main(command)
    return 0


if __name__ == "__main__":
    from minibert_hf.cli import run_cli

    run_cli(main)

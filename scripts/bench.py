"""Benchmark MiniBERT pretraining against transformers' BertForPreTraining on the same batches.

Shapes (``--shape``; any field can still be set on its own):

* ``bench`` (default): vocab 30522, hidden 256, 4 layers, 4 heads, FFN 1024, max positions 512, dropout 0.1,
  batch 32 (BERT's post-LN and learned positions in both models: the same function);
* ``mini``: the shape ``make pretrain`` trains (vocab 8192, hidden 128, 4 layers, 4 heads, FFN 512, 128
  positions, no dropout, batch 16), post-LN with learned positions in both models;
* ``mini-pre``: ours is the ``mini`` preset itself (pre-LN, rotary positions, the two-sentence NSP head); HF's
  stays post-LN at the same shape (it has no such variant): a speed reference, not the same function;
* ``bert-base``: hidden 768, 12 layers, 12 heads, FFN 3072, vocab 30522, batch 32 (for GPUs).

Rows (``--rows``): ``short`` = the pairs as prepared (the default corpus: ~74 tokens, a third of a batch padding);
``long`` = consecutive pairs joined and cut at ``--max-seq-length`` (almost no padding).

What it measures:

* training step (forward, backward, gradient clipping at 1.0, AdamW step) of both models, alternating A/B after a
  warm-up, on identical batches: median ms/step, real tokens/s, the median of the per-pair speed ratios, and the loss
  of both models (same initial weights) on a fixed held-out batch after the same steps;
* the FLOPs of each model's step counted from the batch shapes (``bench_flops.training_flops``), their ratio (what
  the algorithm alone buys: HF projects every padded position onto the vocabulary), and each model's achieved
  FLOP/s as a share of a large matrix product timed in the same process (the machine's practical peak);
* peak training memory: each model trains a few steps in a fresh subprocess; peak RSS minus the RSS before the
  first step (so it covers activations, gradients and optimizer state, not the weights); on CUDA the peak of
  allocated device memory instead;
* inference forward with full (batch, seq, vocab) logits: median ms and ratio (plus a logits parity check);
* data preparation throughput (MB of raw text per second for ``prepare_pretraining_data``);
* DataLoader + collate throughput (batches/s), static masks (``collate_batch``) and dynamic masks.

Results are merged into ``OUTPUT/results.json`` under a run name (``fp32``, ``mini-long-fp32``, ``cuda-bf16``, ...),
and ``results.md`` (tables, machine, commands) and ``results.png`` (bar chart) are rebuilt from every run there.

    python scripts/bench.py                      # fp32, the default corpus prepared into the cache on first use
    python scripts/bench.py --shape mini --rows long
    python scripts/bench.py --bf16               # bf16 autocast for both models
    python scripts/bench.py --compile            # torch.compile both models
    python scripts/bench.py --device cuda --bf16 # on a GPU (scripts/bench_gpu.py runs the GPU set)
    python scripts/bench.py --csv train.csv      # a prepared CSV instead of the default corpus

The machine may be shared and noisy: the ratios are medians of A/B pairs measured back to back.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/bench.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_flops import synchronize  # noqa: E402  (the one device wait, shared with the matrix-product timing)

_BENCH = dict(vocab_size=30522, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
              max_position_embeddings=512, dropout=0.1, batch_size=32)
_MINI = dict(vocab_size=8192, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
             max_position_embeddings=128, dropout=0.0, batch_size=16)
SHAPES = {
    "bench": _BENCH,
    "mini": _MINI,
    "mini-pre": _MINI,
    "bert-base": dict(_BENCH, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}


def shown_path(path) -> str:
    """A path as the results show it: no folder of this machine, only where it is relative to the cache or here."""
    from minibert_hf.corpus import cache_dir

    path = Path(path).resolve()
    for base, name in ((cache_dir().resolve(), "$MINIBERT_CACHE"), (Path.cwd().resolve(), ".")):
        if path.is_relative_to(base):
            return f"{name}/{path.relative_to(base).as_posix()}"
    return f"{path.parent.name}/{path.name}"  # elsewhere: its folder and name only

def parse_args(argv=None):
    from minibert_hf.cli import ArgumentParser

    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--csv", help="a prepared pretraining CSV to take batches from (default: the default corpus, "
                                    "prepared into the cache on first use)")
    data.add_argument("--text-files", nargs="+", help="prepare these text files instead of the default corpus")
    data.add_argument("--data-dir", help="where the prepared bench data lives "
                                         "(default: $MINIBERT_CACHE/bench-data-v<vocab>-l<max_seq_length>)")
    data.add_argument("--no-prep-bench", action="store_true",
                      help="do not time a data preparation when the prepared data already exists")
    data.add_argument("--prep-repeat", type=int, default=1,
                      help="time data preparation on the corpus repeated N times (memory should stay flat)")
    data.add_argument("--loader-batches", type=int, default=200,
                      help="batches to draw when timing DataLoader + collate")
    data.add_argument("--rows", choices=("short", "long"), default="short",
                      help="short: the pairs as prepared; long: consecutive pairs joined up to --max-seq-length")
    model = p.add_argument_group("model (defaults: from --shape)")
    model.add_argument("--shape", choices=tuple(SHAPES), default="bench", help="model shape and batch size")
    model.add_argument("--vocab-size", type=int)
    model.add_argument("--hidden-size", type=int)
    model.add_argument("--num-layers", type=int)
    model.add_argument("--num-heads", type=int)
    model.add_argument("--intermediate-size", type=int)
    model.add_argument("--max-position-embeddings", type=int)
    model.add_argument("--dropout", type=float, help="hidden and attention dropout of both models")
    model.add_argument("--batch-size", type=int)
    model.add_argument("--max-seq-length", type=int, default=128)
    run = p.add_argument_group("run")
    run.add_argument("--steps", type=int, default=20, help="measured training steps per model (A/B alternating)")
    run.add_argument("--warmup", type=int, default=3, help="unmeasured training steps per model first")
    run.add_argument("--inference-steps", type=int, default=None, help="measured forwards per model "
                                                                       "(default: --steps)")
    run.add_argument("--memory-steps", type=int, default=3, help="training steps in each memory subprocess")
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    run.add_argument("--bf16", action="store_true", help="bf16 autocast for both models")
    run.add_argument("--compile", action="store_true", help="torch.compile both models as pretrain.py --compile "
                                                             "does (batches padded to multiples of 32 tokens)")
    run.add_argument("--reference", choices=("hf", "eager"), default="hf",
                     help="the model ours is timed against: transformers' BertForPreTraining, or (with --compile) "
                          "our own model run eagerly (unpadded), with the same weights")
    run.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) for both models")
    run.add_argument("--learning-rate", type=float, default=1e-4)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--name", help="the run's name in results.json (default: from --bf16/--compile/--threads)")
    run.add_argument("--output-dir", default="bench", help="where results.json/.md/.png go")
    p.add_argument("--memory-child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--batches-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, value in SHAPES[args.shape].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    for name in ("steps", "warmup", "batch_size", "max_seq_length", "loader_batches", "memory_steps", "prep_repeat"):
        value = getattr(args, name)
        if value < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else 'positive'}, got {value}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be positive, got {args.threads}")
    if args.reference == "eager" and not args.compile:
        p.error("--reference eager compares compiled with eager: it needs --compile")
    if args.inference_steps is None:
        args.inference_steps = args.steps
    return args


def run_name(args):
    if args.name:
        return args.name
    name = "bf16" if args.bf16 else "fp32"
    if args.device != "cpu":
        name = f"cuda-{name}"
    if args.rows == "long":
        name = f"long-{name}"
    if args.shape != "bench":
        name = f"{args.shape}-{name}"
    if args.compile:
        name += "-compile"
    if args.reference == "eager":
        name += "-vs-eager"
    if args.fused_adamw:
        name += "-fusedadamw"
    if args.threads is not None:
        name += f"-t{args.threads}"
    return name


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def model_configs(args, vocab_size):
    """(ours, HF's) configs. Both BERT's post-LN with learned positions, except ours at ``--shape mini-pre``: the
    ``mini`` preset (pre-LN, rotary positions, the two-sentence NSP head) at the same shape."""
    from transformers import BertConfig

    from minibert_hf import MiniBertConfig

    shape = dict(vocab_size=vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
                 num_attention_heads=args.num_heads, intermediate_size=args.intermediate_size,
                 max_position_embeddings=args.max_position_embeddings, type_vocab_size=2, hidden_act="gelu",
                 hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout, layer_norm_eps=1e-12,
                 initializer_range=0.02, pad_token_id=0)
    ours = MiniBertConfig.from_preset("mini", **shape) if args.shape == "mini-pre" else MiniBertConfig(**shape)
    hf = BertConfig(**shape)
    hf._attn_implementation = "sdpa"
    return ours, hf


def build_models(args, vocab_size):
    """Both models with the same initial weights (ours copied into HF's layout where the layouts match)."""
    import torch
    from transformers import BertForPreTraining

    from minibert_hf import MiniBertForPreTraining

    ours_config, hf_config = model_configs(args, vocab_size)
    torch.manual_seed(args.seed)
    ours = MiniBertForPreTraining(ours_config)
    if args.reference == "eager":  # the reference is our own model, the same weights, never compiled
        return ours, copy.deepcopy(ours), []
    torch.manual_seed(args.seed)
    hf = BertForPreTraining(hf_config)
    copied = copy_weights(ours, hf)
    return ours, hf, copied


def copy_weights(ours, hf):
    """Copy our weights into HF's BertForPreTraining (fused QKV split into query/key/value).

    HF's NSP pooler (dense + tanh) has no counterpart in ours and keeps its own initialisation. Returns the list of
    HF parameter names that were not copied (empty pooler aside when everything lines up).
    """
    import torch

    src = ours.state_dict()
    mapping = {}
    prefix = "minibert."
    mapping["bert.embeddings.word_embeddings.weight"] = src.get(prefix + "embeddings.word_embeddings.weight")
    mapping["bert.embeddings.position_embeddings.weight"] = src.get(prefix + "embeddings.position_embeddings.weight")
    mapping["bert.embeddings.token_type_embeddings.weight"] = src.get(
        prefix + "embeddings.token_type_embeddings.weight")
    for kind in ("weight", "bias"):
        mapping[f"bert.embeddings.LayerNorm.{kind}"] = src.get(prefix + f"embeddings.LayerNorm.{kind}")
        for i in range(ours.config.num_hidden_layers):
            ours_layer, hf_layer = f"{prefix}layers.{i}.", f"bert.encoder.layer.{i}."
            qkv = src.get(ours_layer + f"attention.qkv.{kind}")
            if qkv is not None:
                for name, part in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
                    mapping[hf_layer + f"attention.self.{name}.{kind}"] = part
            for hf_name, ours_name in (("attention.output.dense", "attention_output"),
                                       ("attention.output.LayerNorm", "attention_LayerNorm"),
                                       ("intermediate.dense", "intermediate"),
                                       ("output.dense", "output"),
                                       ("output.LayerNorm", "output_LayerNorm")):
                mapping[hf_layer + f"{hf_name}.{kind}"] = src.get(ours_layer + f"{ours_name}.{kind}")
        mapping[f"cls.predictions.transform.dense.{kind}"] = src.get(f"lm_head.dense.{kind}")
        mapping[f"cls.predictions.transform.LayerNorm.{kind}"] = src.get(f"lm_head.LayerNorm.{kind}")
        mapping[f"cls.seq_relationship.{kind}"] = src.get(f"nsp_head.{kind}")
    mapping["cls.predictions.bias"] = src.get("lm_head.decoder.bias")
    target = hf.state_dict()
    not_copied = []
    with torch.no_grad():
        for name, tensor in target.items():
            value = mapping.get(name)
            if name == "cls.predictions.decoder.bias":
                value = mapping.get("cls.predictions.bias")
            if name == "cls.predictions.decoder.weight":
                continue  # tied to the word embeddings
            if value is None or value.shape != tensor.shape:
                not_copied.append(name)
                continue
            tensor.copy_(value)
    hf.tie_weights()
    return not_copied


def optimizer_for(model, args):
    """The same optimizer for both models: torch's AdamW (its CPU default is the per-parameter loop; on CUDA the
    multi-tensor one), or its fused kernel with --fused-adamw."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01,
                             fused=True if args.fused_adamw else None)


def autocast(device, bf16):
    """bf16 autocast on the device's type when asked for (a no-op context otherwise)."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def to_device(batch, device):
    """A collated batch on the device; to CUDA through pinned host memory with asynchronous copies."""
    import torch

    cuda = torch.device(device).type == "cuda"
    return {key: (value.pin_memory() if cuda else value).to(device, non_blocking=cuda) for key, value in batch.items()}


def make_train_step(model, optimizer, args):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        with autocast(args.device, args.bf16):
            output = model(**batch)
        loss = output.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())  # waits for the device: the step's time covers its work

    return step


def make_forward(model, args):
    import torch

    def forward(batch):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode(), autocast(args.device, args.bf16):
            logits = model(**inputs).prediction_logits
        synchronize(args.device)
        return logits

    return forward


def eval_loss(model, batch, args):
    """(loss, MLM loss) of the model on a held-out batch, in eval mode. The MLM loss is computed here from either
    model's logits (ours: one row per target; HF's: every position), so both are the same quantity."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(args.device, args.bf16):
        output = model(**batch)
    model.train(was_training)
    labels = batch["labels"]
    logits = output.prediction_logits
    if logits.dim() == 3:  # (batch, seq, vocab) -> the target positions
        logits = logits[labels != -100]
    return float(output.loss), float(F.cross_entropy(logits.float(), labels[labels != -100]))


def real_tokens(batch):
    return int(batch["attention_mask"].sum())


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def write_corpus_text(documents, path):
    """The default corpus as a text file (one paragraph per line, blank line between documents)."""
    with open(path, "w", encoding="utf-8") as handle:
        for document in documents:
            handle.write("\n".join(document) + "\n\n")


def prepare_data(args, scratch: Path):
    """Return (train_csv, prep_info). Prepares the data when needed; times one preparation.

    The default corpus is prepared once into the cache, in a folder named by its options and the preparation code's
    fingerprint (``pretraining_data.default_data_dir``), so data written by other code is never benchmarked;
    ``--text-files`` without ``--data-dir`` are prepared into ``scratch`` for this run only.
    """
    from minibert_hf.corpus import DEFAULT_CORPUS_INFO
    from minibert_hf.pretraining_data import PreparationOptions, default_data_dir, prepare_pretraining_data

    options = PreparationOptions(vocab_size=args.vocab_size, max_seq_length=args.max_seq_length, seed=args.seed)
    prep = None
    if args.csv:
        csv_path = Path(args.csv)
        if not csv_path.is_file():
            from minibert_hf.errors import MiniBertInputError

            raise MiniBertInputError("no such file", file=str(csv_path))
        data_dir = None
    else:
        if args.data_dir:
            data_dir = Path(args.data_dir)
        elif args.text_files:
            data_dir = scratch / "data"
        else:
            data_dir = default_data_dir(options, prefix="bench-data")
        csv_path = data_dir / "train.csv"
    need_prep = not csv_path.is_file()
    # With --csv, a preparation is timed only on --text-files (never a download behind the user's back).
    timed = not args.no_prep_bench and (data_dir is not None or args.text_files)
    if not (need_prep or timed):
        return csv_path, None
    with tempfile.TemporaryDirectory(prefix="minibert-bench-") as tmp:
        text_files, source_info = args.text_files, None
        if not text_files:
            from minibert_hf.corpus import default_corpus_documents

            corpus_txt = Path(tmp) / "default_corpus.txt"
            write_corpus_text(default_corpus_documents(), corpus_txt)
            text_files = [str(corpus_txt)]
            source_info = dict(DEFAULT_CORPUS_INFO)

        def run(files, target):
            raw_bytes = sum(os.path.getsize(f) for f in files)
            before = rss_bytes()
            reset_peak_rss()
            started = time.perf_counter()
            stats = prepare_pretraining_data(target, options, text_files=files, show_progress=False,
                                             source_info=source_info)
            seconds = time.perf_counter() - started
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            return {
                "raw_mb": round(raw_bytes / 1e6, 3),
                "repeat": 1,
                "seconds": round(seconds, 3),
                "mb_per_second": round(raw_bytes / 1e6 / seconds, 3),
                "seconds_tokenizer": stats.get("seconds_tokenizer"),
                "seconds_pairs": stats.get("seconds_pairs"),
                "peak_rss_growth_mb": round((peak_rss_bytes() - before) / 2**20, 1),
                "largest_child_peak_rss_mb": round(children / 2**20, 1),
                "pairs": stats.get("pairs"),
                "tokenizer_vocab_size": stats.get("vocab_size"),
                "mean_row_length": stats.get("mean_row_length"),
                "source": stats.get("corpus") or stats.get("source"),
            }

        if need_prep and data_dir is not None:
            prep = run(text_files, data_dir)
            if args.prep_repeat == 1 or not timed:
                return csv_path, prep
        if args.prep_repeat > 1:
            # A corpus N times larger: the same documents again (each copy is new documents to the pipeline).
            repeated = Path(tmp) / f"corpus_x{args.prep_repeat}.txt"
            with open(repeated, "w", encoding="utf-8") as out:
                for _ in range(args.prep_repeat):
                    for name in text_files:
                        with open(name, encoding="utf-8") as handle:
                            for line in handle:
                                out.write(line)
                        out.write("\n\n")
            text_files = [str(repeated)]
        prep = run(text_files, Path(tmp) / "prep")
        prep["repeat"] = args.prep_repeat
    return csv_path, prep


def tokenizer_vocab_size(csv_path):
    stats = csv_path.parent / "stats.json"
    if stats.is_file():
        try:
            return json.loads(stats.read_text(encoding="utf-8")).get("vocab_size")
        except (OSError, ValueError):
            return None
    return None


def long_rows(dataset, max_length):
    """Rows near ``max_length`` tokens: consecutive pairs joined (each later one without its [CLS]) and cut at
    ``max_length``, with their segment ids and MLM labels alongside; the first pair's NSP label."""
    rows, current = [], None
    for example in dataset:
        if current is None:
            current = {key: list(example[key]) for key in ("input_ids", "token_type_ids", "labels")}
            current["next_sentence_label"] = example["next_sentence_label"]
        else:
            for key in ("input_ids", "token_type_ids", "labels"):
                current[key] += list(example[key])[1:]
        if len(current["input_ids"]) >= max_length:
            rows.append({key: value[:max_length] if isinstance(value, list) else value
                         for key, value in current.items()})
            current = None
    return rows


def loader_for(dataset, args, collate_fn):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(args.seed)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=generator,
                      collate_fn=collate_fn, drop_last=len(dataset) >= args.batch_size)


def time_loader(dataset, args, collate_fn):
    """Batches per second drawn from a fresh DataLoader (single process, as the training loop on CPU)."""
    drawn, started = 0, time.perf_counter()
    while drawn < args.loader_batches:
        for _ in loader_for(dataset, args, collate_fn):
            drawn += 1
            if drawn >= args.loader_batches:
                break
    return drawn / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------


def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss():
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    """VmHWM (peak RSS since start or since reset_peak_rss), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args):
    """Run in a fresh process: train one model a few steps; print the peak RSS growth as JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertForPreTraining

    from minibert_hf import MiniBertForPreTraining
    from minibert_hf.training import compile_model

    batches = torch.load(args.batches_file, weights_only=True)
    ours_config, hf_config = model_configs(args, batches["vocab_size"])
    torch.manual_seed(args.seed)
    if args.memory_child == "ours" or args.reference == "eager":
        model = MiniBertForPreTraining(ours_config)
    else:
        model = BertForPreTraining(hf_config)
    if args.compile and (args.memory_child == "ours" or args.reference == "hf"):
        model = compile_model(model)
    model.train()
    step = make_train_step(model, optimizer_for(model, args), args)
    before = rss_bytes()
    reset = reset_peak_rss()
    for i in range(args.memory_steps):
        step(batches["batches"][i % len(batches["batches"])])
    peak = peak_rss_bytes()
    print(json.dumps({"peak_rss_mb": round(peak / 2**20, 1), "rss_before_mb": round(before / 2**20, 1),
                      "peak_growth_mb": round((peak - before) / 2**20, 1), "peak_reset": reset}))


def measure_memory(args, batches, vocab_size, argv):
    import torch

    with tempfile.TemporaryDirectory(prefix="minibert-bench-mem-") as tmp:
        path = Path(tmp) / "batches.pt"
        torch.save({"batches": batches[: args.memory_steps], "vocab_size": vocab_size}, path)
        results = {}
        for which in ("ours", "hf"):
            command = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child", which,
                       "--batches-file", str(path)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory subprocess for {which} failed:\n{done.stderr[-2000:]}")
            results[which] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def measure_device_memory(args, models, batches):
    """CUDA: the peak of allocated device memory over a few training steps of each model, minus what it held
    before (activations, gradients and optimizer state), with a fresh optimizer each."""
    import torch

    results = {}
    for which, model in models.items():
        step = make_train_step(model, optimizer_for(model, args), args)
        synchronize(args.device)
        before = torch.cuda.memory_allocated(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        for i in range(args.memory_steps):
            step(batches[i % len(batches)])
        peak = torch.cuda.max_memory_allocated(args.device)
        results[which] = {"peak_mb": round(peak / 2**20, 1), "peak_growth_mb": round((peak - before) / 2**20, 1)}
    return results


def measure_training(args, ours, hf, batches, held_out, peak):
    import torch

    from bench_flops import training_flops

    models = {"ours": ours, "hf": hf}
    steps = {which: make_train_step(model, optimizer_for(model, args), args) for which, model in models.items()}
    loss_start = {which: eval_loss(model, held_out, args) for which, model in models.items()}
    ours.train()
    hf.train()
    torch.manual_seed(args.seed)
    for i in range(args.warmup):
        for which in ("ours", "hf"):
            steps[which](batches[i % len(batches)])
    times = {"ours": [], "hf": []}
    losses = {"ours": [], "hf": []}
    flops = {"ours": [], "hf": []}
    tokens = []
    for i in range(args.steps):
        batch = batches[(args.warmup + i) % len(batches)]
        tokens.append(real_tokens(batch))
        for which, model in models.items():
            config = getattr(model, "_orig_mod", model).config
            flops[which].append(training_flops(config, batch, ours=config.model_type == "minibert"))
        order = ("ours", "hf") if i % 2 == 0 else ("hf", "ours")
        for which in order:
            started = time.perf_counter()
            losses[which].append(steps[which](batch))
            times[which].append(time.perf_counter() - started)
    loss_end = {which: eval_loss(model, held_out, args) for which, model in models.items()}
    result = {}
    for which in ("ours", "hf"):
        achieved = statistics.median(f / t for f, t in zip(flops[which], times[which])) / 1e9
        result[which] = {
            "median_ms": round(statistics.median(times[which]) * 1000, 1),
            "min_ms": round(min(times[which]) * 1000, 1),
            "tokens_per_second": round(statistics.median(n / t for n, t in zip(tokens, times[which])), 1),
            "gflop_per_step": float(f"{statistics.fmean(flops[which]) / 1e9:.4g}"),
            "achieved_gflops": round(achieved, 1),
            "share_of_peak": round(achieved / peak["gflops_median"], 4),
            "train_loss_last": round(losses[which][-1], 4),
            "train_loss_mean_last5": round(statistics.fmean(losses[which][-5:]), 4),
            "held_out_loss_start": round(loss_start[which][0], 4),
            "held_out_loss_end": round(loss_end[which][0], 4),
            "held_out_mlm_loss_start": round(loss_start[which][1], 4),
            "held_out_mlm_loss_end": round(loss_end[which][1], 4),
        }
    ratios = [h / o for o, h in zip(times["ours"], times["hf"])]
    result["speedup_median_of_pairs"] = round(statistics.median(ratios), 3)
    result["speedup_min_of_pairs"] = round(min(ratios), 3)
    result["speedup_max_of_pairs"] = round(max(ratios), 3)
    result["flop_ratio"] = round(sum(flops["hf"]) / sum(flops["ours"]), 3)
    result["steps_each"] = args.steps
    result["warmup_each"] = args.warmup
    result["real_tokens_per_batch_mean"] = round(statistics.fmean(tokens), 1)
    result["padded_tokens_per_batch_mean"] = round(
        statistics.fmean(batches[(args.warmup + i) % len(batches)]["input_ids"].numel() for i in range(args.steps)), 1)
    return result


def measure_inference(args, ours, hf, batches):
    import torch

    ours.eval()
    hf.eval()
    forwards = {"ours": make_forward(ours, args), "hf": make_forward(hf, args)}
    for which in ("ours", "hf"):
        forwards[which](batches[0])
    times = {"ours": [], "hf": []}
    for i in range(args.inference_steps):
        batch = batches[i % len(batches)]
        order = ("ours", "hf") if i % 2 == 0 else ("hf", "ours")
        for which in order:
            started = time.perf_counter()
            forwards[which](batch)
            times[which].append(time.perf_counter() - started)
    ratios = [h / o for o, h in zip(times["ours"], times["hf"])]
    # parity: with the same weights, the MLM logits of both models agree
    with torch.inference_mode():
        a = forwards["ours"](batches[0]).float()
        b = forwards["hf"](batches[0]).float()
    mask = batches[0]["attention_mask"].bool()
    ours.train()
    hf.train()
    return {
        "ours_median_ms": round(statistics.median(times["ours"]) * 1000, 1),
        "hf_median_ms": round(statistics.median(times["hf"]) * 1000, 1),
        "speedup_median_of_pairs": round(statistics.median(ratios), 3),
        "steps_each": args.inference_steps,
        "logits_max_abs_diff_real_tokens": float((a[mask] - b[mask]).abs().max()),
    }


def machine_info(args):
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text)
    except OSError:
        pass
    if torch.device(args.device).type == "cuda":
        cpu = f"{torch.cuda.get_device_name(args.device)} (host CPU: {cpu})"
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0

    from bench_report import write_reports

    from minibert_hf.atomic import write_json
    from minibert_hf.collator import DynamicMasker, collate_batch
    from minibert_hf.pretraining_csv import load_pretraining_csv
    from minibert_hf.training import COMPILE_LENGTH_STEP, compile_model

    output_dir = Path(args.output_dir)
    machine = machine_info(args)
    print(f"[bench] run {run_name(args)}: {machine['torch_threads']} threads, load {machine['load_average_start']}",
          flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="minibert-bench-data-"))
    try:
        csv_path, prep = prepare_data(args, scratch)
        dataset = load_pretraining_csv(str(csv_path), max_length=args.max_seq_length)
        if args.rows == "long":
            dataset = long_rows(dataset, args.max_seq_length)
        tok_vocab = tokenizer_vocab_size(csv_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if prep:
        print(f"[bench] data prep: {prep['raw_mb']} MB (corpus x{prep['repeat']}) in {prep['seconds']} s = "
              f"{prep['mb_per_second']} MB/s; peak RSS growth {prep['peak_rss_growth_mb']} MB, largest worker "
              f"{prep['largest_child_peak_rss_mb']} MB", flush=True)
    if len(dataset) < 2:
        from minibert_hf.errors import MiniBertInputError

        raise MiniBertInputError(f"need at least 2 rows to benchmark, found {len(dataset)}", file=str(csv_path))
    max_id = max(max(row["input_ids"]) for row in dataset)
    vocab_size = max(args.vocab_size, max_id + 1)

    masker, generator = DynamicMasker(vocab_size), torch.Generator().manual_seed(args.seed)

    def masked_collate(examples):  # what the training loop does to each micro-batch, here in the DataLoader
        return masker(collate_batch(examples), generator)

    loader = {
        "collate_batch_batches_per_second": round(time_loader(dataset, args, collate_batch), 1),
        "dynamic_masking_batches_per_second": round(time_loader(dataset, args, masked_collate), 1),
        "batch_size": args.batch_size,
    }
    print(f"[bench] loader: {loader}", flush=True)

    needed = args.warmup + max(args.steps, args.inference_steps) + 1
    batches = []
    # compiled, as in pretrain.py --compile: padded lengths in steps of 32 tokens, a graph for each
    collate = partial(collate_batch, pad_to_multiple_of=COMPILE_LENGTH_STEP) if args.compile else collate_batch
    while len(batches) < needed:
        for batch in loader_for(dataset, args, collate):
            batches.append(batch)
            if len(batches) >= needed:
                break
    held_out, batches = to_device(batches[-1], args.device), [to_device(b, args.device) for b in batches[:-1]]

    from bench_flops import gpu_bf16_peak_tflops, matmul_peak

    on_cuda = torch.device(args.device).type == "cuda"
    # the practical peak: fp32 on the CPU (what the steps run in), bf16 on a GPU's tensor cores
    peak = (matmul_peak(args.device, size=8192, dtype=torch.bfloat16) if on_cuda else matmul_peak(args.device))
    if on_cuda:
        listed = gpu_bf16_peak_tflops(torch.cuda.get_device_name(args.device))
        peak["datasheet_bf16_tflops"] = listed
    print(f"[bench] matrix-product peak: {peak}", flush=True)

    ours, hf, not_copied = build_models(args, vocab_size)
    ours, hf = ours.to(args.device), hf.to(args.device)
    if args.compile:
        ours = compile_model(ours)
        if args.reference == "hf":
            hf = compile_model(hf)
    if args.reference == "eager":
        weights = "same initial weights (the reference, in the HF columns, is our own model run eagerly)"
    elif set(not_copied) <= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}:
        weights = "same initial weights (ours copied into HF; HF's NSP pooler keeps its own)"
    else:
        weights = f"independent initialisation; not copied: {not_copied}"

    inference = measure_inference(args, ours, hf, batches)
    print(f"[bench] inference: {inference}", flush=True)
    training = measure_training(args, ours, hf, batches, held_out, peak)
    if on_cuda and peak.get("datasheet_bf16_tflops"):
        for which in ("ours", "hf"):  # model FLOPs utilisation against the data sheet
            training[which]["mfu"] = round(training[which]["achieved_gflops"] / 1e3 / peak["datasheet_bf16_tflops"], 4)
    print(f"[bench] training: speed-up {training['speedup_median_of_pairs']}x (FLOP ratio "
          f"{training['flop_ratio']}x), ours {training['ours']}, hf {training['hf']}", flush=True)
    memory = None
    if not args.no_memory and on_cuda:
        memory = measure_device_memory(args, {"ours": ours, "hf": hf}, batches)
    del ours, hf
    if not args.no_memory and not on_cuda:
        memory = measure_memory(args, batches, vocab_size, argv)
        print(f"[bench] memory: {memory}", flush=True)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    run = {
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python scripts/bench.py " + " ".join(shlex.quote(a) for a in argv),
        "machine": machine,
        "config": {"shape": args.shape, "rows": args.rows, "device": args.device, "reference": args.reference,
                   "vocab_size": vocab_size, "hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers,
                   "num_attention_heads": args.num_heads, "intermediate_size": args.intermediate_size,
                   "max_position_embeddings": args.max_position_embeddings, "batch_size": args.batch_size,
                   "max_seq_length": args.max_seq_length, "dropout": args.dropout, "bf16": args.bf16, "compile": args.compile,
                   "optimizer": f"AdamW(lr={args.learning_rate}, weight_decay=0.01"
                                f"{', fused=True' if args.fused_adamw else ''})", "clip_grad_norm": 1.0},
        "data": {"csv": shown_path(csv_path), "rows": len(dataset), "tokenizer_vocab_size": tok_vocab,
                 "model_vocab_size": vocab_size},
        "weights": weights,
        "matmul_peak": peak,
        "data_prep": prep,
        "loader": loader,
        "inference": inference,
        "training": training,
        "memory": memory,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / "results.json"
    results = {"runs": {}}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
            results.setdefault("runs", {})
        except ValueError:
            results = {"runs": {}}
    results["runs"][run_name(args)] = run
    write_json(results_path, results)
    write_reports(results, output_dir)
    print(f"[bench] wrote {results_path}, results.md, results.png", flush=True)
    return 0


if __name__ == "__main__":
    from minibert_hf.cli import run_cli

    run_cli(main)

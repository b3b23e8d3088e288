"""How much arithmetic a training step needs, and how much the machine can do: the yardsticks of scripts/bench.py.

* :func:`training_flops` counts the floating-point operations of one training step of either model from the shapes
  of its batch (matrix products only: the encoder's projections and feed-forward, attention, the MLM and NSP heads),
  forward + backward = 3 x forward. MiniBERT projects only the real tokens and runs the vocabulary projection only
  on the MLM targets; transformers' BertForPreTraining projects every padded position onto the whole vocabulary.
  Their ratio is what the algorithm alone buys.
* :func:`matmul_peak` times a large matrix product on the bench's device and thread count: the practical peak that
  a step's achieved FLOP/s is compared with.
* :data:`GPU_BF16_PEAK_TFLOPS`: the dense bf16 tensor-core peaks of common data-centre GPUs, for MFU on CUDA.
"""

from __future__ import annotations

import statistics
import time

# Dense (no sparsity) bf16 peaks from the vendors' data sheets, TFLOP/s; matched against the device name.
GPU_BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX A6000": 155.0,
}


def gpu_bf16_peak_tflops(device_name: str) -> float | None:
    """The table's peak for a CUDA device name (the longest matching key wins), or None if it is not listed."""
    matches = [key for key in GPU_BF16_PEAK_TFLOPS if key.lower() in device_name.lower()]
    return GPU_BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def forward_flops(config, batch, ours: bool) -> int:
    """Matrix-product FLOPs of one forward pass on ``batch`` (a collated pretraining batch with ``labels``).

    Per layer and projected token: QKV 2*h*3h, attention output 2*h*h, feed-forward 2 * 2*h*ff. Attention itself
    runs on the padded (batch, seq) grid in both models: scores and weighted values, 2 * 2*queries*seq*h per row.
    The MLM head (dense h*h, then the vocabulary) runs on the targets in ours and on every position in HF's. With
    the [CLS] NSP head our last layer computes only the targets and [CLS] (after QKV on every token): its queries,
    packed to the longest row's count, its attention output and its feed-forward.
    """
    h, ff, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    rows, seq = batch["input_ids"].shape
    real_tokens = int(batch["attention_mask"].sum())
    is_target = batch["labels"] != -100
    targets = int(is_target.sum())
    projected = real_tokens if ours else rows * seq
    predicted = targets if ours else rows * seq
    qkv, per_token = 2 * h * 3 * h, 2 * h * h + 2 * 2 * h * ff

    def layer(tokens_in, tokens_out, queries_per_row):
        return tokens_in * qkv + tokens_out * per_token + rows * 2 * 2 * queries_per_row * seq * h

    encoder = config.num_hidden_layers * layer(projected, projected, seq)
    if ours and config.nsp_input == "cls":  # the last layer on the targets and [CLS] alone
        kept_per_row = (is_target[:, 1:].sum(1) + 1).max()
        encoder += layer(projected, targets + rows, int(kept_per_row)) - layer(projected, projected, seq)
    mlm_head = predicted * (2 * h * h + 2 * h * vocab)
    if not ours:  # BERT's pooler (dense h*h on [CLS]) and the NSP classifier
        nsp_head = rows * (2 * h * h + 2 * h * 2)
    elif config.nsp_input == "segments":  # dense 2h -> h on (a * b, |a - b|), then h -> 2
        nsp_head = rows * (2 * 2 * h * h + 2 * h * 2) + (rows * 2 * h * h if config.use_pooler else 0)
    else:
        nsp_head = rows * ((2 * h * h if config.use_pooler else 0) + 2 * h * 2)
    return encoder + mlm_head + nsp_head


def training_flops(config, batch, ours: bool) -> int:
    """FLOPs of a training step: the forward pass and a backward pass of twice its cost."""
    return 3 * forward_flops(config, batch, ours)


def synchronize(device) -> None:
    """Wait for the device's queued work, so a wall-clock time covers it (CUDA runs asynchronously)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: str = "cpu", size: int = 2048, repeats: int = 7, dtype=None) -> dict:
    """The median rate of a (size x size) @ (size x size) product: the practical FLOP/s peak of this device and
    thread count, in GFLOP/s (fp32 unless ``dtype``)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    for _ in range(2):  # warm-up: thread pools, kernel selection
        a @ b
    synchronize(device)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "gflops_median": round(statistics.median(rates), 1),
            "gflops_max": round(max(rates), 1)}

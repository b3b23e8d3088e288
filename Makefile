# Two commands for a fresh machine: `make pretrain` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUTPUT ?= outputs/minibert-default

.PHONY: setup test pretrain bench-gpu clean

setup: $(STAMP)

# torch is pinned and installed first: the pinned CPU wheel lies on this machine's disk,
# while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Two worker processes (most tests run one torch thread or wait on a subprocess's imports), each taking whole test
# files (--dist loadfile), so a module's shared fixtures are built once: on a 2-core machine the suite takes about
# 0.6 of the serial time. TEST_WORKERS=0 runs it serially in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# About ten minutes in all on 2 CPU cores: 8 minutes of training, whose schedules follow the elapsed time, so a
# faster machine trains more steps (README, "What make pretrain gives"). --epochs only caps the steps.
pretrain: $(STAMP)
	$(BIN)/accelerate launch --config_file configs/cpu.yaml scripts/pretrain.py --preset mini \
		--config-overrides num_hidden_layers=2 --output-dir $(OUTPUT) --overwrite-output-dir --dupe-factor 3 \
		--max-train-minutes 8 --epochs 20 --batch-size 16 --learning-rate 2e-3 --warmup-ratio 0.06 \
		--adam-beta2 0.98 --masking dynamic --mlm-probability 0.3 --mlm-probability-end 0.15 \
		--short-phase-length 64 --short-phase-share 0.75 --eval-steps 0.25 --checkpointing-steps 1000

# On a machine with CUDA: the bench and bert-base shapes in bf16, eager and compiled (README, "Speed").
# Without CUDA it says so in one line and exits 0.
bench-gpu: $(STAMP)
	$(BIN)/python scripts/bench_gpu.py

clean:
	rm -rf $(VENV) outputs

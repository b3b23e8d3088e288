"""Every option of pretraining in one list: :class:`PretrainingArguments`.

``scripts/pretrain.py`` builds its command line from these fields (``transformers.HfArgumentParser``: each field is
a flag, ``--learning-rate`` or ``--learning_rate``, its help text from the field's metadata), and Python callers
make one directly. :meth:`PretrainingArguments.check` is the one place options are checked.
"""

from __future__ import annotations

import dataclasses
import math
import os

from .errors import MiniBertInputError, UserError

MASKING = ("static", "dynamic")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard")


def option(default, help: str, **kwargs):
    """A dataclass field with its command-line help text."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@dataclasses.dataclass
class PretrainingArguments:
    """The options of ``scripts/pretrain.py`` and :func:`minibert_hf.training.train`."""

    # data (none given: the default corpus, prepared once into $MINIBERT_CACHE)
    train_file: list[str] | None = option(None, "pretraining CSV(s) from prepare_data.py or the course lab "
                                                "(none: the default corpus)")
    test_file: list[str] | None = option(None, "held-out CSV(s) (default: test.csv next to the train file)")
    tokenizer: str | None = option(None, "tokenizer folder (default: tokenizer/ next to the train file)")
    masking: str = option("dynamic", "static: the CSV's masks as written (the course lab); dynamic: fresh 80/10/10 "
                                     "masks every time a row is served (RoBERTa)")
    mlm_probability: float = option(0.15, "share of tokens that are MLM targets, for dynamic masking")
    mlm_probability_end: float | None = option(None, "dynamic masking: the share falls linearly from "
                                                     "--mlm-probability at the first step to this at the last")
    whole_word_masking: bool = option(False, "dynamic masking: mask whole words (all the ## pieces of a word "
                                             "or none), as BERT's whole-word-masking models")
    short_phase_length: int | None = option(None, "train on rows cut to this many tokens for the first "
                                                   "--short-phase-share of the run, then on whole rows (BERT's "
                                                   "two phases; the longer sentence of a pair loses tokens)")
    short_phase_share: float | None = option(None, "share of the run (as the schedules measure it) on cut rows")
    vocab_size: int = option(8192, "vocabulary of the default corpus's tokenizer (default corpus only)")
    max_seq_length: int = option(128, "row length of the default corpus (default corpus only)")
    dupe_factor: int = option(1, "passes over the default corpus's training documents, each with new NSP pairs "
                                 "and cut points (default corpus only; BERT used 10)")
    num_workers: int = option(0, "DataLoader worker processes")
    # model
    preset: str = option("mini", "model size: tiny, baby, mini or small")
    config_overrides: str | None = option(None, 'change preset fields, e.g. "hidden_size=256,hidden_dropout_prob=0"')
    init_from: str | None = option(None, "start from a saved model folder instead of a fresh preset")
    # optimisation
    epochs: int = option(1, "passes over the training data")
    max_steps: int | None = option(None, "optimizer steps; overrides --epochs")
    max_train_minutes: float | None = option(None, "a time budget: train until this many minutes have passed "
                                                   "(or --max-steps/--epochs, whichever comes first); the "
                                                   "learning-rate schedule follows the elapsed time")
    batch_size: int = option(32, "rows per micro-batch and process")
    eval_batch_size: int | None = option(None, "default: 2 x --batch-size")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    adam_beta2: float = option(0.999, "AdamW's second-moment decay (0.98 adapts faster, as in RoBERTa)")
    nsp_loss_weight: float = option(1.0, "training loss = MLM loss + this x NSP loss (eval loss: the plain sum)")
    warmup_ratio: float = option(0.1, "share of the steps with a linear warm-up, then linear decay to 0")
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0: no clipping")
    mixed_precision: str | None = option(None, "no, bf16 or fp16 (default: accelerate's config)")
    compile: bool = option(False, "torch.compile the model: padded batches in lengths of multiples of 32 "
                                  "(one graph each, no host decisions); eager unpads instead")
    seed: int = option(42, "seed of weights, data order, dropout and dynamic masks")
    # output
    output_dir: str = option("outputs/minibert", "where epoch-N/, final/, checkpoints/ and metrics.jsonl go")
    overwrite_output_dir: bool = option(False, "start afresh in a folder that holds a run")
    logging_steps: int = option(50, "write training loss to metrics.jsonl every N steps")
    eval_steps: float = option(0, "evaluate every N steps; below 1, a share of the run (0.25: at 25, 50, 75 and "
                                  "100%%, of the steps or, with --max-train-minutes, of the time); 0: after each "
                                  "epoch only")
    checkpointing_steps: int = option(0, "save resumable state every N steps (and at the end); 0: none")
    save_total_limit: int | None = option(2, "keep the newest K checkpoints")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoints/step-N folder")
    report_to: str = option("none", "none or tensorboard")
    progress: bool = option(True, "show a progress bar (--no-progress: none)")
    push_to_hub: bool = option(False, "upload final/ to the Hub at the end")
    hub_model_id: str | None = option(None, "the Hub repository, e.g. your-name/minibert")
    hub_private: bool = option(False, "create the Hub repository as private")

    def model_config(self, **fields):
        """The preset's config with --config-overrides applied, then `fields` (e.g. the tokenizer's vocab size)."""
        from .configuration_minibert import MiniBertConfig

        try:
            return MiniBertConfig.from_preset(self.preset, **{**parse_config_overrides(self.config_overrides),
                                                              **fields})
        except ValueError as error:
            raise UserError(f"--config-overrides: {error}") from None

    def check(self):
        """Raise a UserError (one line) for an option that cannot work, before anything is loaded or written."""
        from .configuration_minibert import PRESETS

        def need(ok, message):
            if not ok:
                raise UserError(message)

        if self.init_from is None:
            need(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
            self.model_config()  # a bad --config-overrides fails here, before any data is read
        else:
            need(not self.config_overrides, "--config-overrides applies to a fresh preset, not to --init-from")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "dupe_factor"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
        need(self.eval_steps >= 0 and (self.eval_steps < 1 or float(self.eval_steps).is_integer()),
             f"--eval-steps must be a whole number of steps or a share of the run below 1, got {self.eval_steps}")
        for name in ("logging_steps", "checkpointing_steps", "num_workers"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        for name in ("max_steps", "eval_batch_size", "save_total_limit"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
        need(self.max_train_minutes is None or (math.isfinite(self.max_train_minutes) and self.max_train_minutes > 0),
             f"--max-train-minutes must be positive, got {self.max_train_minutes}")
        need(math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"--learning-rate must be positive, got {self.learning_rate}")
        need(self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}")
        need(0 < self.adam_beta2 < 1, f"--adam-beta2 must be in (0, 1), got {self.adam_beta2}")
        need(self.nsp_loss_weight >= 0, f"--nsp-loss-weight must be 0 or more, got {self.nsp_loss_weight}")
        need(0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.max_grad_norm >= 0, f"--max-grad-norm must be 0 or more, got {self.max_grad_norm}")
        need(0 < self.mlm_probability < 1, f"--mlm-probability must be in (0, 1), got {self.mlm_probability}")
        need(self.mlm_probability_end is None or 0 < self.mlm_probability_end < 1,
             f"--mlm-probability-end must be in (0, 1), got {self.mlm_probability_end}")
        need(self.mlm_probability_end is None or self.masking == "dynamic",
             "--mlm-probability-end needs --masking dynamic")
        need(not self.whole_word_masking or self.masking == "dynamic", "--whole-word-masking needs --masking dynamic")
        need((self.short_phase_length is None) == (self.short_phase_share is None),
             "--short-phase-length and --short-phase-share go together")
        need(self.short_phase_length is None or self.short_phase_length >= 5,
             f"--short-phase-length must be at least 5 ([CLS] A [SEP] B [SEP]), got {self.short_phase_length}")
        need(self.short_phase_share is None or 0 < self.short_phase_share <= 1,
             f"--short-phase-share must be in (0, 1], got {self.short_phase_share}")
        need(self.masking in MASKING, f"--masking must be static or dynamic, got {self.masking!r}")
        need(self.mixed_precision in (None, *MIXED_PRECISION),
             f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        need(self.report_to in REPORT_TO, f"--report-to must be none or tensorboard, got {self.report_to!r}")
        need(not self.push_to_hub or self.hub_model_id, "--push-to-hub needs --hub-model-id")
        for path in [*(self.train_file or []), *(self.test_file or [])]:
            if not os.path.exists(path):
                raise MiniBertInputError("file does not exist", file=path)
            if os.path.isdir(path):
                raise MiniBertInputError("is a directory, expected a CSV file", file=path)
        if self.tokenizer is not None and not os.path.isdir(self.tokenizer):
            raise MiniBertInputError("folder does not exist" if not os.path.exists(self.tokenizer) else
                                     "not a folder", file=self.tokenizer)
        if self.init_from is not None:
            from .model_folder import check_model_folder

            check_model_folder(self.init_from)  # a MiniBERT save_pretrained folder with safetensors weights

    def card_fields(self) -> dict:
        """The options that describe how a model was trained (for its model card and trackers): no paths."""
        keep = ("preset", "config_overrides", "init_from", "epochs", "max_steps", "max_train_minutes", "batch_size",
                "gradient_accumulation_steps", "learning_rate", "weight_decay", "adam_beta2", "warmup_ratio",
                "max_grad_norm", "masking", "mlm_probability", "mlm_probability_end", "whole_word_masking",
                "short_phase_length", "short_phase_share",
                "nsp_loss_weight", "mixed_precision", "seed")
        fields = {k: getattr(self, k) for k in keep if getattr(self, k) is not None}
        if "init_from" in fields:
            from .corpus import shown_name

            fields["init_from"] = shown_name(fields["init_from"])
        return fields


def parse_config_overrides(text: str | None) -> dict:
    """"hidden_size=256,hidden_dropout_prob=0" -> {"hidden_size": 256, "hidden_dropout_prob": 0.0}.

    Each value takes the type of the field's default (int, float, bool or str); an unknown field is an error.
    """
    from .configuration_minibert import MiniBertConfig

    defaults = MiniBertConfig().to_dict()
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"expected key=value, got {item!r}")
        if key not in defaults or key in ("auto_map", "architectures", "model_type", "transformers_version"):
            raise ValueError(f"unknown config field {key!r}")
        kind = float if defaults[key] is None else type(defaults[key])  # classifier_dropout: None or a float
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                overrides[key] = value.lower() in ("true", "1")
            elif kind in (int, float):
                overrides[key] = kind(value)
            else:
                overrides[key] = value
        except ValueError:
            raise ValueError(f"{key} must be {kind.__name__}, got {value!r}") from None
    return overrides

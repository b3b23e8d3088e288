"""minibert-hf: pretrain a small BERT (MLM + NSP) and ship it as a Hugging Face model.

Importing the package registers the MiniBERT classes with the transformers Auto classes, so
``AutoModel.from_pretrained(folder)`` works in-package without remote code. Every folder written by
``save_pretrained`` also carries the two code files and an ``auto_map``, so it loads anywhere with
``trust_remote_code=True``.
"""

from importlib import import_module

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_minibert import PRESETS, MiniBertConfig
from .modeling_minibert import (
    MiniBertForMaskedLM,
    MiniBertForMultipleChoice,
    MiniBertForNextSentencePrediction,
    MiniBertForPreTraining,
    MiniBertForQuestionAnswering,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
    MiniBertModel,
    MiniBertPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(MiniBertConfig.model_type, MiniBertConfig, exist_ok=True)
for _auto, _model in (
    (AutoModel, MiniBertModel),
    (AutoModelForPreTraining, MiniBertForPreTraining),
    (AutoModelForMaskedLM, MiniBertForMaskedLM),
    (AutoModelForSequenceClassification, MiniBertForSequenceClassification),
    (AutoModelForTokenClassification, MiniBertForTokenClassification),
    (AutoModelForQuestionAnswering, MiniBertForQuestionAnswering),
    (AutoModelForMultipleChoice, MiniBertForMultipleChoice),
    (AutoModelForNextSentencePrediction, MiniBertForNextSentencePrediction),
):
    _auto.register(MiniBertConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)
MiniBertConfig.register_for_auto_class()

# The rest of the package (data, training, inference, hub) is imported on first use, so that
# `import minibert_hf` stays quick and the model alone needs only torch and transformers.
_LAZY = {
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "load_pretraining_csv": "pretraining_csv",
    "collate_batch": "collator",
    "prepare_pretraining_data": "pretraining_data",
    "PretrainingArguments": "arguments",
    "train": "training",
    "load_model": "model_folder",
    "predict_nsp": "inference",
    "predict_mlm": "inference",
    "push_to_hub": "hub",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "MiniBertConfig",
    "MiniBertModel",
    "MiniBertPreTrainedModel",
    "MiniBertForPreTraining",
    "MiniBertForMaskedLM",
    "MiniBertForSequenceClassification",
    "MiniBertForTokenClassification",
    "MiniBertForQuestionAnswering",
    "MiniBertForMultipleChoice",
    "MiniBertForNextSentencePrediction",
    *_LAZY,
]

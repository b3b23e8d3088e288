"""What works with which transformers tool, as a new user meets it: each row of the README's table
("What works with transformers") is checked here or in the test named beside it.

The pipelines run in a process where this package cannot be imported, on folders fine-tuned with finetune.py's
library function; Trainer pretraining with DataCollatorForLanguageModeling runs a few steps in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from isolation import BLOCK_MINIBERT_HF
from minibert_hf.finetuning import finetune
from minibert_hf.finetuning_data import load_conll, load_csv_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_finetune import write_topic_csv  # noqa: E402
from test_inference import STORY, story_tokenizer, trained_model_folder  # noqa: E402
from test_token_classification import write_conll  # noqa: E402

PIPELINES = BLOCK_MINIBERT_HF + textwrap.dedent("""
    import json, sys

    from transformers import AutoConfig, AutoTokenizer, pipeline
    from transformers.utils import logging
    logging.set_verbosity_error()

    pretrained, classifier, tagger = sys.argv[1:4]
    out = {"config": type(AutoConfig.from_pretrained(pretrained, trust_remote_code=True)).__name__,
           "tokenizer": AutoTokenizer.from_pretrained(pretrained, trust_remote_code=True).tokenize("the cat sat")}
    features = pipeline("feature-extraction", model=pretrained, trust_remote_code=True)
    vectors = features("the cat sat on the mat .")
    out["features"] = [len(vectors), len(vectors[0]), len(vectors[0][0])]
    classify = pipeline("text-classification", model=classifier, trust_remote_code=True)
    out["classify"] = classify(["the cat sat on the mat .", "rain fell on the red roof ."])
    tag = pipeline("token-classification", model=tagger, trust_remote_code=True, aggregation_strategy="simple")
    out["tag"] = [{"entity_group": e["entity_group"], "word": e["word"], "start": e["start"], "end": e["end"]}
                  for e in tag("the dog slept by the green park .")]
    out["models"] = sorted({type(p.model).__module__.split(".")[0] for p in (features, classify, tag)})
    out["leaked"] = sorted(m for m in sys.modules if m.startswith("minibert_hf"))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("ecosystem")
        trained = trained_model_folder()
        classifier = root / "classifier"
        finetune(trained, load_csv_dataset(write_topic_csv(root / "topics.csv")), epochs=4, batch_size=8,
                 learning_rate=2e-3, output_dir=classifier, log=None)
        tagger = root / "tagger"
        finetune(trained, load_conll(write_conll(root / "tags.conll", documents=24), test_fraction=0.25),
                 epochs=8, batch_size=8, learning_rate=3e-3, validation_fraction=0.25, output_dir=tagger, log=None)
    finally:
        torch.set_num_threads(threads)
    return dict(pretrained=trained, classifier=classifier, tagger=tagger, root=root)


def test_pipelines_through_remote_code_without_the_package(folders, tmp_path):
    copies = {}
    for name in ("pretrained", "classifier", "tagger"):
        copies[name] = tmp_path / name
        shutil.copytree(folders[name], copies[name])
    (tmp_path / "pipelines.py").write_text(PIPELINES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, "-I", "pipelines.py", *(str(copies[n]) for n in copies)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == [] and out["models"] == ["transformers_modules"]  # the folders' own code
    assert out["config"] == "MiniBertConfig" and out["tokenizer"] == ["the", "cat", "sat"]
    assert out["features"] == [1, 9, 64]  # 1 text, [CLS] + 7 tokens + [SEP], hidden 64
    assert [r["label"] for r in out["classify"]] == ["1", "0"]  # indoor animals 1, weather 0
    assert out["tag"] == [{"entity_group": "ANIMAL", "word": "dog", "start": 4, "end": 7},
                          {"entity_group": "PLACE", "word": "green park", "start": 21, "end": 31}]


def test_trainer_pretrains_the_masked_lm_with_transformers_collator(tmp_path):
    """A user who prefers Trainer: MiniBertForMaskedLM + DataCollatorForLanguageModeling (README, "Pretraining
    with Trainer instead")."""
    from datasets import Dataset
    from transformers import (AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)

    from minibert_hf import MiniBertConfig, MiniBertForMaskedLM

    tokenizer = story_tokenizer()
    dataset = Dataset.from_dict({"text": STORY * 8}).map(lambda rows: tokenizer(rows["text"]), batched=True,
                                                          remove_columns=["text"])
    torch.manual_seed(0)
    model = MiniBertForMaskedLM(MiniBertConfig.from_preset("tiny", vocab_size=len(tokenizer)))
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(
            model=model, train_dataset=dataset, processing_class=tokenizer, callbacks=[Losses()],
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            args=TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=40, per_device_train_batch_size=8,
                                   learning_rate=5e-3, logging_steps=10, save_strategy="no", report_to="none",
                                   use_cpu=True, disable_tqdm=True, seed=0),
        )
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses  # it learns
    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(loaded).__name__ == "MiniBertForMaskedLM"
    assert (tmp_path / "saved" / "modeling_minibert.py").is_file()  # the folder carries its code

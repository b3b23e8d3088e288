"""The fine-tuning heads beyond sequence classification, and gradient checkpointing.

Each head follows transformers' BERT: its output type, its loss convention and its Auto class. A pretraining folder
loads into every head through remote code, without this package, with no warning about the pretraining heads it
leaves out; the head trains (loss, backward), saves and reloads to the same outputs.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from isolation import BLOCK_MINIBERT_HF
from minibert_hf import (
    MiniBertForMultipleChoice,
    MiniBertForNextSentencePrediction,
    MiniBertForPreTraining,
    MiniBertForQuestionAnswering,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
)
from test_modeling import make_batch, tiny_model

HEADS = {  # Auto class -> our class
    "AutoModelForTokenClassification": "MiniBertForTokenClassification",
    "AutoModelForQuestionAnswering": "MiniBertForQuestionAnswering",
    "AutoModelForMultipleChoice": "MiniBertForMultipleChoice",
    "AutoModelForNextSentencePrediction": "MiniBertForNextSentencePrediction",
}

ROUND_TRIP = BLOCK_MINIBERT_HF + textwrap.dedent("""
    import io, json, logging, sys

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    pretrained, batch_file, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    batch = torch.load(batch_file, weights_only=True)
    captured = io.StringIO()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger("transformers").addHandler(logging.StreamHandler(captured))

    def inputs_for(name):
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        if name == "AutoModelForTokenClassification":
            return dict(input_ids=ids, attention_mask=mask, labels=batch["tags"])
        if name == "AutoModelForQuestionAnswering":
            return dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                        start_positions=batch["starts"], end_positions=batch["ends"])
        if name == "AutoModelForMultipleChoice":
            return dict(input_ids=ids.view(2, 2, -1), attention_mask=mask.view(2, 2, -1),
                        token_type_ids=types.view(2, 2, -1), labels=batch["choice"])
        return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=batch["next_sentence_label"])

    results = {}
    for name in %(heads)r:
        auto = getattr(transformers, name)
        captured.seek(0), captured.truncate()
        kwargs = dict(num_labels=3) if name == "AutoModelForTokenClassification" else {}
        model = auto.from_pretrained(pretrained, trust_remote_code=True, **kwargs)
        report = captured.getvalue()
        torch.manual_seed(0)
        out = model.train()(**inputs_for(name))
        out.loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        model.eval()
        with torch.no_grad():
            first = [v for k, v in out.items() if k != "loss"]
            before = [t.tolist() for t in model(**inputs_for(name)).values() if t.dim() > 0]
        model.save_pretrained(f"{out_dir}/{name}")
        saved = json.load(open(f"{out_dir}/{name}/config.json"))
        again = auto.from_pretrained(f"{out_dir}/{name}", trust_remote_code=True).eval()
        with torch.no_grad():
            after = [t.tolist() for t in again(**inputs_for(name)).values() if t.dim() > 0]
        results[name] = dict(cls=type(model).__name__, module=type(model).__module__, report=report,
                             loss=float(out.loss), no_grad=no_grad, output=type(out).__name__,
                             shapes=[list(t.shape) for t in first], before=before, after=after,
                             auto_map=saved["auto_map"], again=type(again).__name__)
    results["leaked"] = sorted(name for name in sys.modules if name.startswith("minibert_hf"))
    print(json.dumps(results))
""") % {"heads": list(HEADS)}


def test_every_head_loads_a_pretraining_folder_through_remote_code(tmp_path):
    pretraining = tiny_model(position_embedding_type="rotary", layer_norm_position="pre", nsp_input="segments")
    pretraining.save_pretrained(tmp_path / "pretrained")
    batch = make_batch()
    g = torch.Generator().manual_seed(1)
    tags = torch.randint(0, 3, batch["input_ids"].shape, generator=g).masked_fill(batch["attention_mask"] == 0, -100)
    tags[:, 0] = -100  # [CLS] has no tag
    extra = dict(tags=tags, starts=torch.tensor([2, 3, 1, 99]), ends=torch.tensor([4, 5, 2, 99]),
                 choice=torch.tensor([1, 0]))
    torch.save({**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "next_sentence_label")},
                **extra}, tmp_path / "batch.pt")
    (tmp_path / "round_trip.py").write_text(ROUND_TRIP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "round_trip.py"), str(tmp_path / "pretrained"),
                           str(tmp_path / "batch.pt"), str(tmp_path / "saved")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("leaked") == []
    shapes = {"AutoModelForTokenClassification": [[4, 16, 3]],
              "AutoModelForQuestionAnswering": [[4, 16], [4, 16]],
              "AutoModelForMultipleChoice": [[2, 2]],
              "AutoModelForNextSentencePrediction": [[4, 2]]}
    outputs = {"AutoModelForTokenClassification": "TokenClassifierOutput",
               "AutoModelForQuestionAnswering": "QuestionAnsweringModelOutput",
               "AutoModelForMultipleChoice": "MultipleChoiceModelOutput",
               "AutoModelForNextSentencePrediction": "NextSentencePredictorOutput"}
    for name, result in results.items():
        assert result["cls"] == HEADS[name] == result["again"], name
        assert "minibert_hf" not in result["module"]
        assert "UNEXPECTED" not in result["report"] and "lm_head" not in result["report"], (name, result["report"])
        assert result["output"] == outputs[name] and result["shapes"] == shapes[name], name
        assert torch.isfinite(torch.tensor(result["loss"])) and result["loss"] > 0
        assert result["no_grad"] == [], (name, result["no_grad"])
        assert result["before"] == result["after"], name  # saved and reloaded: the same outputs, exactly
        assert set(HEADS) <= set(result["auto_map"])
    # The NSP head is the pretraining model's own: same logits as the pretraining checkpoint, before any training.
    nsp = MiniBertForNextSentencePrediction.from_pretrained(tmp_path / "pretrained").eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.testing.assert_close(nsp(**inputs).logits, pretraining(**inputs).seq_relationship_logits)


def test_token_classification_loss_ignores_minus_100():
    model = tiny_model(MiniBertForTokenClassification, num_labels=3)
    batch = make_batch()
    labels = torch.randint(0, 3, batch["input_ids"].shape, generator=torch.Generator().manual_seed(2))
    labels[batch["attention_mask"] == 0] = -100
    labels[:, ::2] = -100
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    kept = labels != -100
    expected = F.cross_entropy(out.logits[kept], labels[kept])
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (*labels.shape, 3)


@pytest.mark.parametrize("num_labels, labels, problem_type, expected_type", [
    (3, torch.tensor([0, 2, 1, 1]), None, "single_label_classification"),
    (1, torch.tensor([0.5, -1.0, 2.0, 0.0]), None, "regression"),
    (1, torch.tensor([[0.5], [-1.0], [2.0], [0.0]]), None, "regression"),  # (batch, 1) targets: no broadcasting
    (3, torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]]), None, "multi_label_classification"),
    (2, torch.tensor([[0.2, 0.7], [1.5, 0.0], [0.0, 0.3], [1.0, 1.0]]), "regression", "regression"),
])
def test_sequence_classification_loss_follows_problem_type(num_labels, labels, problem_type, expected_type):
    """As transformers' BERT: the loss config.problem_type names, or, unset, the one the labels imply (then kept in
    the config)."""
    model = tiny_model(MiniBertForSequenceClassification, num_labels=num_labels, problem_type=problem_type)
    batch = make_batch()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    expected = {"single_label_classification": lambda: F.cross_entropy(out.logits, labels),
                "regression": lambda: F.mse_loss(out.logits.view(labels.shape), labels),
                "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(out.logits, labels)}
    torch.testing.assert_close(out.loss, expected[expected_type]())
    assert model.config.problem_type == expected_type


def test_question_answering_loss_is_the_mean_of_start_and_end_and_ignores_positions_past_the_end():
    model = tiny_model(MiniBertForQuestionAnswering)
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    starts, ends = torch.tensor([2, 3, 1, 50]), torch.tensor([4, 5, 2, 60])  # the last answer was truncated away
    out = model(**inputs, start_positions=starts, end_positions=ends)
    start_loss = F.cross_entropy(out.start_logits[:3], starts[:3])
    end_loss = F.cross_entropy(out.end_logits[:3], ends[:3])
    torch.testing.assert_close(out.loss, (start_loss + end_loss) / 2)
    assert out.start_logits.shape == out.end_logits.shape == batch["input_ids"].shape


def test_multiple_choice_scores_each_choice_on_its_own():
    model = tiny_model(MiniBertForMultipleChoice, classifier_pooling="mean")
    batch = make_batch()
    shaped = {k: batch[k].view(2, 2, -1) for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.tensor([1, 0])
    out = model(**shaped, labels=labels)
    assert out.logits.shape == (2, 2)
    for row in range(2):  # choice c of question q alone, through the same encoder and classifier
        for choice in range(2):
            length = int(shaped["attention_mask"][row, choice].sum())
            single = {k: v[row, choice, :length].view(1, 1, -1) for k, v in shaped.items()}  # without its padding
            alone = model(**single).logits  # (1 question, 1 choice)
            torch.testing.assert_close(alone[0, 0], out.logits[row, choice], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


def test_next_sentence_prediction_head_is_the_pretraining_head():
    pretraining = tiny_model(MiniBertForPreTraining, nsp_input="cls", use_pooler=True)
    nsp = tiny_model(MiniBertForNextSentencePrediction, seed=1, nsp_input="cls", use_pooler=True)
    nsp.load_state_dict(pretraining.state_dict(), strict=False)
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = nsp(**inputs, labels=batch["next_sentence_label"])
    torch.testing.assert_close(out.logits, pretraining(**inputs).seq_relationship_logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, batch["next_sentence_label"]))


# ------------------------------------------------------------------------------------- gradient checkpointing

# transformers 5.23 renamed gradient_checkpointing_enable to activation_checkpointing_enable (and is_... likewise);
# the package supports transformers 5.0 on, so both names are tested where they exist.
RENAMED_CHECKPOINTING = hasattr(PreTrainedModel, "activation_checkpointing_enable")


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("fields", [dict(), dict(position_embedding_type="rotary", layer_norm_position="pre",
                                                 nsp_input="segments")], ids=["bert", "mini"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(padded, fields):
    """transformers' own mechanism: our layers are GradientCheckpointingLayer blocks."""
    model = tiny_model(**fields).train()  # dropout on: the recomputation must draw the same masks
    assert model.config.hidden_dropout_prob > 0
    batch = make_batch()
    if not padded:
        batch = {k: v[:1] for k, v in batch.items()}  # the first row is full length: no padding at all
        assert bool(batch["attention_mask"].all())
    calls = []
    hook = model.minibert.layers[0].attention.register_forward_hook(lambda *args: calls.append(1))

    def loss_and_grads():
        model.zero_grad()
        calls.clear()
        torch.manual_seed(3)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain_loss, plain_grads, plain_calls = loss_and_grads()
    if RENAMED_CHECKPOINTING:
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
    else:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    loss, grads, checkpointed_calls = loss_and_grads()
    model.activation_checkpointing_disable() if RENAMED_CHECKPOINTING else model.gradient_checkpointing_disable()
    hook.remove()
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer really was recomputed in the backward pass
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=0)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_enable_the_name_users_know():
    model = tiny_model()
    # deprecated since transformers 5.23 for activation_checkpointing_enable; the only name before
    with pytest.warns(FutureWarning) if RENAMED_CHECKPOINTING else contextlib.nullcontext():
        model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.minibert.layers)

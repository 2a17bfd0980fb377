"""Model templates: output shapes, the classifier's padding mask, and training through the real engine."""

from __future__ import annotations

import csv

import pytest
import torch

from templates import TEMPLATES, build_template, list_templates
from tests.conftest import classification_config, fit_classifier
from utils.models.build import build_model
from utils.models.tasks import ClassificationTask


def classifier(**overrides):
    config = {"vocab_size": 20, "max_seq_len": 16, "num_classes": 3, "pad_id": 0, "size": "tiny", **overrides}
    torch.manual_seed(0)
    return build_template("classifier", config).eval()


def test_registry_lists_the_classifier_for_classification():
    assert TEMPLATES["classifier"].task == "classification"
    assert list_templates("classification") == ["classifier"]
    assert list_templates("lm") == ["gpt"]


def test_gpt_gives_logits_per_position():
    model = build_template("gpt", {"vocab_size": 50, "max_seq_len": 16, "size": "tiny"})
    assert model(torch.randint(0, 50, (2, 16))).shape == (2, 16, 50)


def test_classifier_gives_one_row_of_logits_per_sequence():
    model = classifier()
    ids = torch.randint(1, 20, (5, 12))
    assert model(ids, torch.ones(5, 12, dtype=torch.bool)).shape == (5, 3)
    assert model(ids).shape == (5, 3)  # without a mask, pad_id marks the padding


def test_classifier_logits_do_not_depend_on_padding():
    model = classifier()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    short = model(ids, torch.ones(1, 5, dtype=torch.bool))
    padded_ids = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], dim=1)  # (1, 12)
    mask = torch.tensor([[True] * 5 + [False] * 7])
    garbage = padded_ids.clone()
    garbage[0, 5:] = torch.tensor([1, 2, 3, 4, 11, 12, 13])  # whatever sits under the mask is ignored
    torch.testing.assert_close(model(padded_ids, mask), short, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(garbage, mask), short, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(padded_ids), short, rtol=0, atol=1e-5)  # mask derived from pad_id
    batch = model(torch.cat([padded_ids, torch.randint(1, 20, (1, 12))]),
                  torch.cat([mask, torch.ones(1, 12, dtype=torch.bool)]))
    torch.testing.assert_close(batch[:1], short, rtol=0, atol=1e-5)  # a longer neighbour in the batch changes nothing


def test_classifier_gives_finite_logits_for_an_all_padding_row():
    logits = classifier()(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.bool))
    assert torch.isfinite(logits).all()


def test_classifier_rejects_fewer_than_two_classes():
    with pytest.raises(ValueError, match="num_classes=1: a classifier needs at least 2 classes"):
        classifier(num_classes=1)


def test_classification_task_reports_accuracy_and_counts_real_tokens():
    model = classifier(num_classes=2)
    ids = torch.randint(1, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 3:] = False
    predicted = model(ids, mask).argmax(-1)
    labels = predicted.clone()
    labels[0] = 1 - labels[0]  # one of four wrong
    loss, metrics = ClassificationTask().loss(model, (ids, mask, labels))
    assert metrics["accuracy"].item() == pytest.approx(0.75)
    assert loss.item() > 0
    assert ClassificationTask().tokens_in((ids, mask, labels)) == 21


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_classifier_learns_a_separable_task_through_the_training_engine(tmp_path, toy_classification, precision):
    data = toy_classification
    config = classification_config(tmp_path, data, max_steps=24, precision=precision)
    torch.manual_seed(config.seed)
    untrained = build_model(config, data.tokenizer.vocab_size, len(data.label_names), data.pad_id)
    before = evaluate(untrained, data)
    trainer, module, val_loader = fit_classifier(config, data, untrained)
    trainer.validate(module, val_loader, verbose=False)
    after = trainer.callback_metrics  # validation metrics go to the loggers through the RunRecorder

    assert trainer.global_step == 24
    assert before <= 0.75  # chance is 0.5
    assert after["val/accuracy"] >= 0.95
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_accuracy = [float(r["train/accuracy"]) for r in rows if r.get("train/accuracy")]
    assert len(train_accuracy) == 24  # one row per optimizer step
    if precision == "16-mixed":
        assert trainer.precision_plugin.scaler is not None  # real fp16 + GradScaler, not bf16


@torch.no_grad()
def evaluate(model, data) -> float:
    ids, mask, labels = data.val.tensors
    accuracy = (model.eval()(ids, mask).argmax(-1) == labels).float().mean().item()
    model.train()
    return accuracy

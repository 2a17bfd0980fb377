"""utils.inference: one generate/predict for a run just trained and an export loaded back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, make_toy_classification, toy_texts
from utils.config import WizardConfig
from utils.data.tokenizers import CharTokenizer
from utils.errors import KitError
from utils.export import ExportedModel, load_exported
from utils.inference import InferenceError, Predictor, classify_texts, encode_for_inference
from utils.training import TrainingResult
from utils.models.build import build_model

TEXT = "def add(a, b):\n    return a + b\n"


def result_of(config: WizardConfig, model, tokenizer, **changes) -> TrainingResult:
    """A TrainingResult holding an untrained model: inference needs no training to be checked."""
    return TrainingResult(config=config, output_dir=Path(config.output_dir), best_checkpoint=None,
                          last_checkpoint=None, train_loss=None, val_loss=None, global_step=0, steps_run=0,
                          tokens_per_sec=0.0, precision="32-true", precision_reason="test", resumed_from=None,
                          model=model.eval(), tokenizer=tokenizer, **changes)


@pytest.fixture
def lm(tmp_path) -> TrainingResult:
    config = WizardConfig(max_seq_len=16, output_dir=str(tmp_path / "run"))
    tokenizer = CharTokenizer.from_blocks([TEXT])
    torch.manual_seed(0)
    return result_of(config, build_model(config, tokenizer.vocab_size), tokenizer)


@pytest.fixture
def classifier(tmp_path) -> TrainingResult:
    data = make_toy_classification()
    config = WizardConfig(task="classification", model_template="classifier", max_seq_len=data.max_seq_len,
                          dataset_source="file", dataset_path="x.csv", output_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = build_model(config, data.tokenizer.vocab_size, len(data.label_names), data.pad_id)
    return result_of(config, model, data.tokenizer, label_names=data.label_names, pad_id=data.pad_id)


def test_generate_repeats_with_a_seed(lm):
    first = lm.generate("def ", max_new_tokens=40, seed=1)
    assert first.startswith("def ") and len(first) == len("def ") + 40  # one character per token
    assert lm.generate("def ", max_new_tokens=40, seed=1) == first
    assert lm.generate("def ", max_new_tokens=40, seed=2) != first
    greedy = lm.generate("def ", max_new_tokens=20, top_k=1, seed=1)
    assert lm.generate("def ", max_new_tokens=20, top_k=1, seed=2) == greedy  # top_k=1 leaves nothing to draw


def test_a_training_result_and_its_loaded_export_answer_alike(tmp_path, lm, classifier):
    assert TrainingResult.generate is ExportedModel.generate is Predictor.generate  # one implementation
    loaded = load_exported(lm.export(tmp_path / "lm_export"))
    assert loaded.generate("def ", max_new_tokens=30, seed=3) == lm.generate("def ", max_new_tokens=30, seed=3)
    texts = toy_texts(6, seed=5)[0] + [""]
    loaded = load_exported(classifier.export(tmp_path / "classifier_export"))
    assert loaded.predict(texts) == classifier.predict(texts)
    assert loaded.predict_proba(texts) == classifier.predict_proba(texts)  # bit for bit
    assert set(classifier.predict_proba("abc")[0]) == {"calm", "loud"}


def test_predict_proba_rows_are_probabilities_in_label_order(classifier):
    texts = ["abc", "ABC", "a b"]
    rows = classifier.predict_proba(texts)
    probs = classify_texts(classifier.model, classifier.tokenizer, texts, 16, classifier.pad_id)  # (3, 2)
    assert [list(row.values()) for row in rows] == probs.tolist()
    assert all(sum(row.values()) == pytest.approx(1.0) for row in rows)
    assert classifier.predict(texts) == [max(row, key=row.get) for row in rows]


def test_each_task_refuses_the_other_tasks_call(lm, classifier):
    with pytest.raises(InferenceError, match=r"predict\(\) needs task='classification'; this model was trained "
                                             r"for task='lm'"):
        lm.predict(["x"])
    with pytest.raises(InferenceError, match=r"generate\(\) needs task='lm'; this model was trained "
                                             r"for task='classification'"):
        classifier.generate("abc")
    assert issubclass(InferenceError, KitError) and issubclass(InferenceError, ValueError)


def test_bad_calls_are_kit_errors_naming_the_fix(lm, classifier):
    with pytest.raises(InferenceError, match="temperature=0 must be > 0"):
        lm.generate("def ", temperature=0)
    with pytest.raises(InferenceError, match="no texts to classify; pass a string or a list of strings"):
        classifier.predict([])


def test_characters_a_char_tokenizer_never_saw_are_dropped_with_a_note(capsys):
    tokenizer = CharTokenizer.from_blocks(["abc "])
    assert encode_for_inference(tokenizer, "The cab") == tokenizer.encode(" cab")
    assert "Note: dropped characters the training text never had: 'Teh'" in capsys.readouterr().out


def test_inference_and_export_load_without_the_training_core():
    """No cycle: training imports inference and export, never the other way round."""
    code = ("import sys, utils.export, utils.inference; "
            "print(sorted(m for m in sys.modules if m.startswith(('utils.training', 'pytorch_lightning'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"

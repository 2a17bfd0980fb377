"""utils.inference: one generate/predict for a run just trained and an export loaded back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, make_toy_classification, toy_texts
from tests.test_adapters import llama_folder  # noqa: F401 (a fixture)
from utils.config import WizardConfig
from utils.data.tokenizers import CharTokenizer
from utils.errors import KitError
from utils.export import ExportedModel, export_result, load_exported
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
    loaded = load_exported(export_result(lm, tmp_path / "lm_export"))
    assert loaded.generate("def ", max_new_tokens=30, seed=3) == lm.generate("def ", max_new_tokens=30, seed=3)
    texts = toy_texts(6, seed=5)[0] + [""]
    loaded = load_exported(export_result(classifier, tmp_path / "classifier_export"))
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


# ------------------------------------------------------------------ pretrained models: the KV cache, end of turn

def pretrained_predictor(folder, model=None) -> ExportedModel:
    """A pretrained language model (the tiny config-built Llama of tests/test_adapters.py) as a Predictor."""
    from transformers import AutoModelForCausalLM

    from utils.data.tokenizers import load_model_tokenizer

    config = WizardConfig(model_source="pretrained", pretrained_model=str(folder), max_seq_len=32)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(folder)
    return ExportedModel(model.eval(), load_model_tokenizer(str(folder), classify=False), config)


def record_calls(model) -> list[tuple[int, bool]]:
    """(tokens fed, whether a KV cache was passed) for every forward call of model."""
    calls = []

    def hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls.append((kwargs["input_ids"].shape[1], cache is not None))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def window_greedy(model, ids: list[int], new: int, max_seq_len: int) -> list[int]:
    """Greedy tokens the plain way: the whole window run again for every token (no cache)."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(new):
            logits = model(input_ids=idx[:, -max_seq_len:]).logits[:, -1]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(ids):].tolist()


def test_a_pretrained_model_generates_with_its_kv_cache_on_both_paths(llama_folder):
    """Issue 28.5 / 30.3: every new token runs alone through the model with the cache of the ones before (the
    kit's loop used to run the whole context again for each token: ~4x slower on a 135M chat model)."""
    predictor = pretrained_predictor(llama_folder)
    prompt = predictor.tokenizer.encode("The import statement")
    expected = window_greedy(predictor.model, prompt, 12, 32)
    calls = record_calls(predictor.model)
    text = predictor.generate("The import statement", max_new_tokens=12, top_k=1, seed=0)
    assert calls == [(len(prompt), False)] + [(1, True)] * 11
    assert text == predictor.tokenizer.decode(prompt + expected)  # the same tokens as without the cache

    calls.clear()
    predictor.chat("What is a list?", max_new_tokens=6, seed=0)
    assert calls[0][1] is False and calls[1:] == [(1, True)] * (len(calls) - 1) and len(calls) >= 2


def test_past_max_seq_len_the_cache_starts_again_from_the_last_half_window(llama_folder):
    predictor = pretrained_predictor(llama_folder)
    calls = record_calls(predictor.model)
    predictor.generate("The import statement", max_new_tokens=40, top_k=1)  # 32 tokens of context at most
    prompt = len(predictor.tokenizer.encode("The import statement"))
    restarts = [n for n, cached in calls if not cached]
    assert restarts[0] == prompt and set(restarts[1:]) == {16} and len(calls) == 40
    assert max(n for n, _ in calls) <= 32


def test_chat_stops_at_the_templates_end_of_turn_token_even_when_it_is_not_eos(tmp_path):
    """A ChatML template closes answers with <|im_end|>; this tokenizer's eos is <|endoftext|>. The model (its
    output layer hooked to always pick <|im_end|>) must stop after one token, not run to max_new_tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_chat_data import build_tokenizer
    from utils.data.chat import PLAIN_CHAT_TEMPLATE

    hf = build_tokenizer()
    hf.eos_token = "<|endoftext|>"
    hf.save_pretrained(tmp_path)
    end = hf.convert_tokens_to_ids("<|im_end|>")
    assert hf.eos_token_id != end
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=hf.eos_token_id))
    model.lm_head.register_forward_hook(lambda m, i, out: torch.where(
        torch.arange(out.size(-1)) == end, 10.0, -10.0).expand_as(out))
    predictor = pretrained_predictor(tmp_path, model)
    calls = record_calls(model)
    assert predictor.chat("Name a colour.", max_new_tokens=20, seed=0) == ""
    assert len(calls) == 1

    from utils.inference import template_end_id

    assert template_end_id(hf) == end
    hf.chat_template = PLAIN_CHAT_TEMPLATE  # ends an answer with eos_token: that, once more
    assert template_end_id(hf) == hf.eos_token_id

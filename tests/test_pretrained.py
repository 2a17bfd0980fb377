"""model_source="pretrained": fine-tune a Hugging Face model with its own tokenizer, resume, export, load back.

Nothing is downloaded: each "pretrained" model is a tiny GPT-2 or DistilBERT built from a config, with a
tokenizer trained here on a few KB of text, saved with save_pretrained into a tmp folder, which is what
pretrained_model names (a Hub name such as "gpt2" loads the same way on Colab).
"""

from __future__ import annotations

import csv
import html
import importlib.util
import math
import os
import random
import signal
import sys

import pytorch_lightning as pl
import pytest
import torch

from tests.conftest import REPO_ROOT, corpus_start
from utils.config import ConfigError, WizardConfig
from utils.env import DeviceInfo
from utils.errors import MissingFileError
from utils.models.pretrained import PretrainedError
from utils.training.callbacks.last_checkpoint import TrainingStopped
from utils.export import export_result

requires_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                           reason="transformers is not installed (pip install transformers, see "
                                                  "requirements-test.txt): the test builds Hugging Face models")

CPU = DeviceInfo("cpu", "CPU")
EOS = "<|endoftext|>"
TINY_RUN = dict(max_seq_len=32, batch_size=4, max_epochs=1, learning_rate=1e-3, warmup_ratio=0.0,
                log_every_n_steps=1, val_split=0.05, checkpoint_every_minutes=0)


def _corpus_text(chars: int) -> str:
    return (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")[:chars]


def _reviews(n: int = 64) -> list[tuple[str, str]]:
    """Separable rows: calm texts use lower-case words, loud ones upper-case."""
    rng = random.Random(0)
    words = {"calm": ["quiet", "soft", "slow", "gentle"], "loud": ["LOUD", "HARSH", "FAST", "NOISY"]}
    return [(" ".join(rng.choice(words[label]) for _ in range(rng.randint(2, 6))), label)
            for label in ("calm", "loud") * (n // 2)]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A tiny GPT-2 and a byte-level BPE tokenizer with an end-of-text token and, as GPT-2's, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("gpt2")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_corpus_text(20_000)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tokenizer),
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def distilbert_folder(tmp_path_factory):
    """A tiny DistilBERT classifier and a BERT-style tokenizer ([CLS] text [SEP], a [PAD] token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("distilbert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([_corpus_text(10_000)] + [text for text, _ in _reviews()],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(name, bpe.token_to_id(name)) for name in ("[CLS]", "[SEP]")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64,
        pad_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class StopDuringStep(pl.Callback):
    """Presses Stop (SIGINT to this process) during optimizer step `step`: the kit finishes it, saves and stops."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)


def _reviews_csv(folder) -> str:
    path = folder / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("review", "sentiment"), *_reviews()])
    return str(path)


@requires_transformers
def test_gpt2_fine_tunes_resumes_at_its_step_and_exports_for_transformers_and_the_kit(tmp_path, gpt2_folder, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.export import load_exported
    from utils.plots import plot_losses
    from utils.loading import load_run
    from utils.training import train

    config = WizardConfig(model_source="pretrained", pretrained_model=str(gpt2_folder), dataset_source="file",
                          dataset_path=str(corpus_start(tmp_path / "data", 12_000)), max_steps=4,
                          output_dir=str(tmp_path / "run"), tokenizer_strategy="bpe", vocab_size=300, **TINY_RUN)
    with pytest.raises(TrainingStopped, match=r"Training stopped \(SIGINT\) at step 3"):
        train(config, device=CPU, extra_callbacks=[StopDuringStep(3)])
    out = capsys.readouterr().out
    assert f"has no pad token; padding with its end-of-text token '{EOS}'" in out
    assert "Data: " in out and "pretrained tokenizer with 320 ids" in out  # the model's own, not the bpe asked for
    assert "Note: learning_rate=0.001 is high for fine-tuning a pretrained model" in out
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()

    second = train(config.replace(tokenizer_strategy="char", model_size="base"), device=CPU)  # fields it does not read
    assert type(second.model).__name__ == "GPT2LMHeadModel"
    assert second.resumed_from == tmp_path / "run/checkpoints/last.ckpt"
    assert (second.global_step, second.steps_run) == (4, 1)
    assert all(math.isfinite(loss) for _, loss in second.train_history + second.val_history)
    straight = train(config.replace(output_dir=str(tmp_path / "straight")), device=CPU)
    assert second.train_history == straight.train_history  # the resume is exact: same batches, same losses
    for (name, resumed), trained in zip(second.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(resumed, trained), name

    folder = export_result(second)
    title = plot_losses(second).get_title()  # named after the model, not a template
    assert title.startswith(f"Loss of {gpt2_folder.name} (") and title.endswith("M parameters) in fp32")
    assert {"config.json", "model.safetensors", "tokenizer.json", "kit_config.json", "tokenizer",
            ".kit-export.json"} <= {p.name for p in folder.iterdir()}
    kit = load_exported(folder)
    assert kit.generate("def ", max_new_tokens=8, seed=0) == second.generate("def ", max_new_tokens=8, seed=0)
    capsys.readouterr()
    run = load_run(tmp_path / "run", checkpoint="last")  # the run folder itself, as `generate RUN_DIR` loads it
    assert run.generate("def ", max_new_tokens=8, seed=0) == second.generate("def ", max_new_tokens=8, seed=0)
    assert "Note: learning_rate" not in capsys.readouterr().out  # the fine-tuning note is for training only

    hf_tokenizer, hf_model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    assert hf_tokenizer.pad_token == EOS and hf_model.config.pad_token_id == hf_tokenizer.eos_token_id
    text = "The import statement"
    ids = hf_tokenizer(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == kit.tokenizer.encode(text)
    with torch.no_grad():
        hf_logits, kit_logits = hf_model(input_ids=ids).logits, kit.model(input_ids=ids).logits
        before = AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()(input_ids=ids).logits
    assert torch.allclose(hf_logits, kit_logits, atol=1e-5)
    assert not torch.allclose(hf_logits, before, atol=1e-4)  # the export holds the fine-tuned weights


@requires_transformers
def test_distilbert_classifier_fine_tunes_with_the_datas_labels_and_exports(tmp_path, distilbert_folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.export import load_exported
    from utils.loading import load_run
    from utils.training import train

    config = WizardConfig(task="classification", model_source="pretrained", pretrained_model=str(distilbert_folder),
                          dataset_source="file", dataset_path=_reviews_csv(tmp_path), text_column="review",
                          label_column="sentiment", max_steps=4, output_dir=str(tmp_path / "run"),
                          **{**TINY_RUN, "val_split": 0.25})
    result = train(config, device=CPU)
    assert result.label_names == ["calm", "loud"] and result.global_step == 4
    assert result.model.config.id2label == {0: "calm", 1: "loud"}
    assert all(math.isfinite(loss) for _, loss in result.train_history + result.val_history)
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file() and result.best_checkpoint.is_file()
    texts = ["quiet soft slow", "LOUD HARSH"]
    cls, sep = (result.tokenizer.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
    encoded = result.tokenizer.encode(texts[0])
    assert (encoded[0], encoded[-1]) == (cls, sep)  # a BERT classifier reads its [CLS]: special tokens added

    kit = load_exported(export_result(result))
    assert kit.label_names == ["calm", "loud"]
    expected = result.predict_proba(texts)
    assert kit.predict(texts) == result.predict(texts)
    run = load_run(tmp_path / "run", checkpoint="last")  # the run folder itself, as `predict RUN_DIR` loads it
    assert run.label_names == ["calm", "loud"] and run.model.config.id2label == {0: "calm", 1: "loud"}
    assert [row == pytest.approx(named) for row, named in zip(run.predict_proba(texts), expected)] == [True, True]
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run/export")
    hf_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/export").eval()
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    assert batch.input_ids[0].tolist()[:len(encoded)] == encoded
    with torch.no_grad():
        probs = torch.softmax(hf_model(**batch).logits, dim=-1)
    for row, named in zip(probs.tolist(), expected):
        assert row == pytest.approx([named["calm"], named["loud"]], abs=1e-5)
    assert hf_model.config.id2label == {0: "calm", 1: "loud"}


@requires_transformers
def test_gpt2_classifier_pads_with_its_end_of_text_token(tmp_path, gpt2_folder):
    """GPT-2 has no pad token: padding with eos, and the model told so, lets a GPT-2 classifier find each
    text's last real token in a right-padded batch, in the kit and in transformers alike."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.training import train

    config = WizardConfig(task="classification", model_source="pretrained", pretrained_model=str(gpt2_folder),
                          dataset_source="file", dataset_path=_reviews_csv(tmp_path), text_column="review",
                          label_column="sentiment", max_steps=2, output_dir=str(tmp_path / "run"),
                          **{**TINY_RUN, "val_split": 0.25})
    result = train(config, device=CPU)
    eos = result.tokenizer.tokenizer.token_to_id(EOS)
    assert result.pad_id == eos and result.model.config.pad_token_id == eos
    texts = ["quiet", "LOUD HARSH FAST NOISY"]  # one row padded to the other's length
    folder = export_result(result)
    hf_model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        probs = torch.softmax(hf_model(**hf_tokenizer(texts, padding=True, return_tensors="pt")).logits, dim=-1)
        alone = torch.softmax(hf_model(**hf_tokenizer(texts[:1], return_tensors="pt")).logits, dim=-1)
    assert probs[0].tolist() == pytest.approx(alone[0].tolist(), abs=1e-5)  # padding does not change a text's label
    for row, named in zip(probs.tolist(), result.predict_proba(texts)):
        assert row == pytest.approx([named["calm"], named["loud"]], abs=1e-5)


@requires_transformers
def test_fp16_with_a_grad_scaler_and_the_wizards_estimate_take_the_pretrained_path_too(tmp_path, gpt2_folder):
    from utils.training import train
    from utils.training.estimate import estimate_config
    from utils.precision import resolve_precision

    config = WizardConfig(model_source="pretrained", pretrained_model=str(gpt2_folder), dataset_source="file",
                          dataset_path=str(corpus_start(tmp_path / "data", 12_000)), max_steps=2,
                          precision="16-mixed", output_dir=str(tmp_path / "run"), **TINY_RUN)
    estimate = estimate_config(config, resolve_precision(True, "16-mixed", CPU))
    assert estimate.precision == "16-mixed" and estimate.fits_memory and estimate.seconds_per_step > 0
    result = train(config, device=CPU)
    assert result.precision == "16-mixed" and result.global_step == 2
    assert all(math.isfinite(loss) for _, loss in result.train_history)


@requires_transformers
def test_the_model_is_loaded_in_fp32_and_training_mode(gpt2_folder):
    from utils.models.pretrained import load_pretrained_model

    model = load_pretrained_model(str(gpt2_folder), "lm")
    assert all(m.training for m in model.modules())  # from_pretrained's eval mode would switch dropout off
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_missing_local_folder_is_one_clear_error_before_anything_is_written(tmp_path, small_text):
    from utils.training import train

    config = WizardConfig(model_source="pretrained", pretrained_model="./nope/", dataset_source="file",
                          dataset_path=str(small_text), output_dir=str(tmp_path / "run"), **TINY_RUN)
    with pytest.raises(MissingFileError, match=r"No pretrained model folder at nope: pretrained_model needs a folder "
                                               r"saved with save_pretrained"):
        train(config, device=CPU)
    assert not (tmp_path / "run/checkpoints").exists() and not (tmp_path / "run/config.json").exists()
    with pytest.raises(PretrainedError, match=r"is a file; give the folder save_pretrained wrote it into"):
        train(config.replace(pretrained_model=str(small_text)), device=CPU)


@requires_transformers
def test_a_model_without_the_tasks_head_is_named_with_the_task(distilbert_folder):
    from utils.models.pretrained import load_pretrained_model

    with pytest.raises(PretrainedError, match=r"has no causal language model head \(AutoModelForCausalLM\) in "
                                              r"transformers .*DistilBertConfig.*; pick a model made for task='lm'"):
        load_pretrained_model(str(distilbert_folder), "lm")


def test_without_transformers_the_pretrained_source_says_what_to_install(tmp_path, small_text, monkeypatch):
    from utils.training import train

    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without it: the import fails
    config = WizardConfig(model_source="pretrained", pretrained_model="gpt2", dataset_source="file",
                          dataset_path=str(small_text), output_dir=str(tmp_path / "run"), **TINY_RUN)
    with pytest.raises(PretrainedError, match=r"^model_source='pretrained' needs the transformers library, which is "
                                              r"not installed here: pip install transformers"):
        train(config, device=CPU)


def test_the_pretrained_source_needs_a_model_name_and_no_tokenizer_settings():
    with pytest.raises(ConfigError, match=r"Pretrained model \(pretrained_model\) is empty; give a Hugging Face "
                                          r"model name such as 'gpt2'"):
        WizardConfig(model_source="pretrained").validate()
    # The model's own tokenizer is used: a tokenizer_strategy that would need a tokenizer_path asks for none.
    WizardConfig(model_source="pretrained", pretrained_model="gpt2", tokenizer_strategy="pretrained").validate()
    with pytest.raises(ConfigError, match=r"Tokenizer path \(tokenizer_path\) is empty"):
        WizardConfig(tokenizer_strategy="pretrained").validate()


@requires_transformers
def test_gpt2_small_at_the_default_batch_fits_a_t4(tmp_path):
    """The pre-flight estimate's memory for GPT-2 small (124M parameters, random init from GPT2Config) at the
    config's default batch and sequence length, against a T4's 15 GB, in the T4's precision (fp16 autocast,
    run on this CPU). About 4 GB: 2 GB of weights, gradients and AdamW state, 130 MB a sequence."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from utils.models.build import build_task
    from utils.training.estimate import measure_memory
    from utils.precision import resolve_precision

    config = WizardConfig(model_source="pretrained", pretrained_model="gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape: 12 layers, 768 wide, 50257 ids, 1024 positions
    t4 = DeviceInfo("cpu", "Tesla T4", None, 15 * 10**9)  # a T4's memory, injected; the passes run on this CPU
    memory = measure_memory(config, resolve_precision(True, "16-mixed", t4), model, build_task(config), 50257, 0)
    assert 120e6 * 16 < memory.fixed_bytes < 2 * 124.5e6 * 16  # weights, grads and AdamW: 16 bytes a parameter
    assert memory.per_sequence_bytes > 10 * 2**20  # a real activation count, not zero
    assert memory.fits(config.batch_size), f"{memory.bytes_at(config.batch_size) / 2**30:.1f} GB"
    assert not memory.fits(8 * config.batch_size)  # the check can fail: a much larger batch does not fit


@requires_transformers
def test_the_wizard_asks_for_the_model_and_not_for_a_tokenizer(gpt2_folder):
    from utils.data.spec import vocab_size_for
    from utils.ui.setup_wizard import SetupWizard

    wizard = SetupWizard(config_path=gpt2_folder.parent / "wizard.json", interactive=True, device=CPU)
    wizard.fields["model_source"].input.value = "pretrained"
    wizard.fields["pretrained_model"].input.value = str(gpt2_folder)
    config = wizard.config
    assert config.model_source == "pretrained" and wizard.errors == {}
    shown = {name for name, field in wizard.fields.items() if field.row.layout.display != "none"}
    assert "pretrained_model" in shown
    assert not {"tokenizer_strategy", "vocab_size", "tokenizer_path", "model_template", "model_path", "dropout"} & shown
    assert "320 token ids (the pretrained model&#x27;s own tokenizer)" in wizard.notes["tokenizer"].value
    while wizard.step < 4:  # on to the review: its plan names the model and its own tokenizer
        wizard.next_button.click()
    plan = html.unescape(wizard.notes["summary"].value)
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(gpt2_folder).parameters())  # counted from config
    assert f"Trains the pretrained language model '{gpt2_folder}' (fine-tuned: {n:,} of {n:,} parameters (100.00%) " \
           "trainable)" in plan
    assert "with the model's own tokenizer (320 token ids)" in plan
    assert vocab_size_for(config) == (320, "the pretrained model's own tokenizer")


@requires_transformers
def test_a_fine_tuned_run_folder_exports_from_the_command_line_and_load_run(tmp_path, gpt2_folder, capsys):
    """Only train()'s result used to export: a run folder's tokenizer had no transformers tokenizer to save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.export import load_exported
    from utils.loading import load_run
    from utils.training import train
    from utils.cli import main

    config = WizardConfig(model_source="pretrained", pretrained_model=str(gpt2_folder), dataset_source="file",
                          dataset_path=str(corpus_start(tmp_path / "data", 12_000)), max_steps=2,
                          output_dir=str(tmp_path / "run"), **TINY_RUN)
    result = train(config, device=CPU)
    assert main(["export", str(tmp_path / "run"), "--checkpoint", "last", "--to", str(tmp_path / "cli-export")]) == 0
    assert f"to {tmp_path / 'cli-export'}" in capsys.readouterr().out
    python_export = load_run(tmp_path / "run", checkpoint="last").export(tmp_path / "python-export")
    expected = result.generate("def ", max_new_tokens=8, seed=0)
    for folder in (tmp_path / "cli-export", python_export):
        assert load_exported(folder).generate("def ", max_new_tokens=8, seed=0) == expected
        hf_tokenizer = AutoTokenizer.from_pretrained(folder)
        assert hf_tokenizer.pad_token == EOS and hf_tokenizer.eos_token == EOS
        assert AutoModelForCausalLM.from_pretrained(folder).config.vocab_size == len(hf_tokenizer)


@requires_transformers
def test_a_new_classifier_head_is_one_line_in_our_words_not_transformers_load_report(gpt2_folder, capfd):
    import logging

    from utils.models.pretrained import load_pretrained_model

    class Records(logging.Handler):  # on transformers' own logger: whatever handlers it writes through
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    seen = Records()
    logging.getLogger("transformers.modeling_utils").addHandler(seen)
    try:
        model = load_pretrained_model(str(gpt2_folder), "classification", ["calm", "loud"], pad_id=0)
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(seen)
    assert model.config.num_labels == 2
    assert not [m for m in seen.messages if "LOAD REPORT" in m]
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in err
    assert (f"Classifier head: score.weight not in {str(gpt2_folder)!r} (or sized for other labels), so it starts "
            "untrained for your 2 labels; fine-tuning trains it.") in out
    load_pretrained_model(str(gpt2_folder), "lm")  # a head that is there: no line
    assert "Classifier head" not in capfd.readouterr().out


@requires_transformers
def test_a_model_converted_from_gguf_fine_tunes_with_its_gguf_quantization_entry_left_out(tmp_path, capsys):
    """transformers keeps {"quant_method": "gguf"} in config.json after converting a GGUF file; the weights are
    plain, yet loading it so made full fine-tuning fail on `.float()` for a "quantized model"."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_adapters import _tokenizer  # the tiny chat tokenizer (imported here: that module imports this one)
    from utils.training import train

    folder, tokenizer = tmp_path / "converted", _tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 eos_token_id=0, bos_token_id=0, pad_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "quantization_config": {"quant_method": "gguf"}}))
    result = train(WizardConfig(model_source="pretrained", pretrained_model=str(folder), dataset_source="file",
                                dataset_path=str(corpus_start(tmp_path / "data", 4_000)),
                                output_dir=str(tmp_path / "run"), max_steps=3, **TINY_RUN), device=CPU)
    out = capsys.readouterr().out
    assert result.global_step == 3 and all(math.isfinite(loss) for _, loss in result.train_history)
    assert out.count("was converted from GGUF and its config.json still names GGUF quantization") == 1
    exported = json.loads((export_result(result, tmp_path / "export") / "config.json").read_text())
    assert "quantization_config" not in exported

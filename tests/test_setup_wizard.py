"""The setup wizard driven without a browser: set widget values, click buttons, read what it shows.

Runs under ipywidgets 8 and 7.7 (CI runs this file again with 7.7, the version Colab ships).
GPU facts come from injected DeviceInfo values (no GPU here); nothing of our own is mocked.
"""

from __future__ import annotations

import html
import importlib.util
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets
import nbformat
import pytest
from nbclient import NotebookClient

from templates import TEMPLATES
from utils.config import SETTINGS, field_errors
from utils.config import WizardConfig as CoreWizardConfig
from utils.env import DeviceInfo
from utils.precision import PrecisionError, resolve_precision
from utils.models.build import build_model
from utils.ui.model_check import measure_model
from utils.ui.presets import PRESETS
from utils.ui.setup_wizard import STEPS, SetupWizard, WizardConfig, detect_interactive, validate_config

REPO = Path(__file__).resolve().parents[1]
IPYWIDGETS_7 = ipywidgets.__version__.startswith("7.")
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 16 * 2**30)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
CPU = DeviceInfo("cpu", "CPU")
EMBEDDED_CHAR_VOCAB = 103  # distinct characters in the embedded corpus


@pytest.fixture(autouse=True)
def no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # CI must not change what these tests see


@pytest.fixture
def wizard_path(tmp_path) -> Path:
    return tmp_path / "wizard_config.json"


def make_wizard(path: Path, device: DeviceInfo = T4, **kwargs) -> SetupWizard:
    return SetupWizard(config_path=path, interactive=True, device=device, **kwargs)


def set_value(wizard: SetupWizard, field: str, value) -> None:
    wizard.fields[field].input.value = value
    assert wizard.output.outputs == (), wizard.output.outputs  # no callback raised


def go_to(wizard: SetupWizard, key: str) -> None:
    target = [s.key for s in STEPS].index(key)
    while wizard.step < target:
        assert not wizard.next_button.disabled, wizard.errors
        wizard.next_button.click()
    assert wizard.step == target


def shown_error(wizard: SetupWizard, field: str) -> str:
    return wizard.fields[field].message


# ------------------------------------------------------------------ contract
def test_public_contract():
    assert WizardConfig is CoreWizardConfig
    assert {"tiny", "small", "t4"} <= set(PRESETS)
    names = [name for step in STEPS for name, _ in step.fields]
    assert len(names) == len(set(names)), "a field must appear on one step only"
    assert set(names) <= set(CoreWizardConfig().to_dict())
    assert [s.title for s in STEPS] == ["Dataset", "Tokenizer", "Model", "Training", "Review & save"]


def test_words_on_screen_are_the_configs_metadata(wizard_path):
    wizard = make_wizard(wizard_path)
    assert all(label == SETTINGS[name].label for step in STEPS for name, label in step.fields)
    for name, field in wizard.fields.items():
        setting = SETTINGS[name]
        assert field.input.description == setting.label
        assert html.escape(setting.help[1:]) in field.help.value and field.help in field.row.children
    for name in ("task", "tokenizer_strategy", "model_source", "model_size", "precision"):
        options = [tuple(o) for o in wizard.fields[name].input.options]
        assert options == [(label, value) for value, label in SETTINGS[name].choices.items()], name
    template_options = dict((value, label) for label, value in wizard.fields["model_template"].input.options)
    assert template_options == {n: f"{n} — {info.description}" for n, info in TEMPLATES.items()}


def test_a_choice_shows_its_label_and_keeps_the_config_value(wizard_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "tokenizer_strategy", "byte")
    assert wizard.fields["tokenizer_strategy"].input.label == SETTINGS["tokenizer_strategy"].choices["byte"]
    assert wizard.config.tokenizer_strategy == "byte"
    set_value(wizard, "task", "classification")
    assert wizard.fields["task"].input.label == "Text classification — text → label"
    assert wizard.fields["task"].value == "classification"


def test_new_wizard_starts_from_defaults_without_a_saved_file(wizard_path):
    wizard = make_wizard(wizard_path)
    assert wizard.config == WizardConfig()
    assert wizard.fields["batch_size"].value == 16 and wizard.fields["model_size"].value == "tiny"
    assert wizard.message.value.count("Started from the defaults.") == 1
    assert not wizard_path.exists()  # nothing is written before Save


# ------------------------------------------------------------------ validation as you type
def test_invalid_batch_size_shows_config_message_and_disables_next(wizard_path):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "training")
    set_value(wizard, "batch_size", 0)
    expected = dict(field_errors(WizardConfig(batch_size=0)))["batch_size"]
    assert expected == "Batch size (batch_size) must be >= 1, not 0"
    assert shown_error(wizard, "batch_size") == expected
    assert html.escape(expected) in wizard.fields["batch_size"].error.value
    assert wizard.next_button.disabled is True
    assert "4. Training (!)" in wizard.indicator.value
    wizard.next_button.click()
    assert wizard.step == 3  # Next cannot be forced past the error
    assert wizard.config.batch_size == 16  # the last valid value stays

    set_value(wizard, "batch_size", 8)
    assert shown_error(wizard, "batch_size") == "" and wizard.fields["batch_size"].error.value == ""
    assert wizard.next_button.disabled is False
    assert wizard.config.batch_size == 8


def test_every_step_shows_its_own_field_errors(wizard_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "val_split", 1.5)
    assert shown_error(wizard, "val_split") == "Validation split (val_split) must be > 0 and < 1, not 1.5 (e.g. 0.1)"
    assert wizard.next_button.disabled
    set_value(wizard, "val_split", 0.2)
    set_value(wizard, "dataset_source", "file")
    assert shown_error(wizard, "dataset_path") == ("File path (dataset_path) is empty; give the path of a .txt, "
                                                   ".csv or .jsonl file")
    assert wizard.next_button.disabled and wizard.config.dataset_source == "embedded"
    set_value(wizard, "dataset_path", "/content/drive/MyDrive/data/train.txt")
    assert wizard.config.dataset_source == "file" and not wizard.next_button.disabled
    go_to(wizard, "tokenizer")
    set_value(wizard, "tokenizer_strategy", "bpe")
    set_value(wizard, "vocab_size", 100)
    assert shown_error(wizard, "vocab_size") == dict(field_errors(WizardConfig(vocab_size=100)))["vocab_size"]
    assert wizard.next_button.disabled


def test_several_errors_each_beside_its_field(wizard_path):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "training")
    set_value(wizard, "learning_rate", 0.0)
    set_value(wizard, "max_epochs", 0)
    set_value(wizard, "gradient_clip_val", -1.0)
    assert wizard.errors == {
        "learning_rate": "Learning rate (learning_rate) must be > 0 and <= 1, not 0.0 (typical: 1e-4 to 1e-3)",
        "max_epochs": "Epochs (max_epochs) must be >= 1, not 0",
        "gradient_clip_val": "Gradient clipping (gradient_clip_val) must be >= 0, not -1.0 (0 turns clipping off)",
    }
    assert all(shown_error(wizard, f) == m for f, m in wizard.errors.items())
    assert validate_config(wizard.config) == []


def test_wizard_config_is_valid_whatever_is_typed(wizard_path):
    wizard = make_wizard(wizard_path)
    for field, value in [("val_split", 0.0), ("batch_size", -3), ("max_seq_len", 1), ("dropout", 1.0),
                         ("learning_rate", 5.0), ("output_dir", "  "), ("gradient_accumulation_steps", 0)]:
        set_value(wizard, field, value)
        assert field in wizard.errors
        assert validate_config(wizard.config) == []
    assert wizard.config == WizardConfig()


def test_hidden_fields_follow_the_choices(wizard_path):
    wizard = make_wizard(wizard_path)
    assert wizard.fields["dataset_path"].row.layout.display == "none"
    assert wizard.upload.layout.display == "none"
    set_value(wizard, "dataset_source", "upload")
    # Nothing uploaded yet: the button says what to do, not a File path error to fix by typing.
    assert wizard.fields["dataset_path"].row.layout.display == "none"
    assert "Press <b>Upload file</b>" in wizard.notes["dataset"].value and wizard.next_button.disabled
    assert wizard.upload.layout.display is None
    assert wizard.fields["vocab_size"].row.layout.display == "none"
    set_value(wizard, "dataset_source", "embedded")
    go_to(wizard, "tokenizer")
    set_value(wizard, "tokenizer_strategy", "bpe")
    assert wizard.fields["vocab_size"].row.layout.display is None
    set_value(wizard, "vocab_size", 10)
    assert "vocab_size" in wizard.errors
    go_to_step_index = wizard.step
    set_value(wizard, "tokenizer_strategy", "byte")  # vocab_size is unused now: hidden, and its error with it
    assert wizard.errors == {} and wizard.fields["vocab_size"].row.layout.display == "none"
    assert not wizard.next_button.disabled and wizard.step == go_to_step_index
    assert "256 token ids (byte tokenizer)" in wizard.notes["tokenizer"].value  # the choice on screen, not the last save
    set_value(wizard, "tokenizer_strategy", "bpe")  # back: the value typed is still there, and so is its error
    assert "vocab_size" in wizard.errors and wizard.fields["vocab_size"].row.layout.display is None


def test_classification_and_your_own_model_are_choices_with_the_configs_messages(wizard_path, tmp_path):
    wizard = make_wizard(wizard_path)
    assert wizard.fields["label_column"].row.layout.display == "none"
    set_value(wizard, "task", "classification")
    assert shown_error(wizard, "dataset_source") == field_errors(wizard_config_with(wizard))[0][1]
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", str(tmp_path / "reviews.csv"))
    assert wizard.fields["label_column"].row.layout.display is None
    assert shown_error(wizard, "model_template") == ("Template (model_template) 'gpt' is a language model ('lm'), not "
                                                     "a text classifier ('classification'); choose 'classifier'")
    set_value(wizard, "model_template", "classifier")
    assert "model_template" not in wizard.errors
    wizard.check_button.click()  # the classifier runs on a dummy (ids, mask, labels) batch
    assert "should score a loss of about 0.7 (it guesses among 2 outputs)" in wizard.notes["check"].value
    assert wizard.fields["model_path"].row.layout.display == "none"
    set_value(wizard, "model_source", "file")
    assert wizard.fields["model_path"].row.layout.display is None
    assert wizard.fields["model_template"].row.layout.display == "none"
    assert shown_error(wizard, "model_path") == "Model file (model_path) is empty; give the path of your model .py file"
    set_value(wizard, "model_path", str(tmp_path / "model.py"))
    set_value(wizard, "model_source", "gist")
    assert shown_error(wizard, "gist_id") == "Gist id or URL (gist_id) is empty; give a Gist id or URL holding model.py"
    set_value(wizard, "gist_id", "0123456789abcdef0123")
    assert wizard.errors == {}
    assert (wizard.config.task, wizard.config.model_source, wizard.config.gist_id) == \
        ("classification", "gist", "0123456789abcdef0123")


def wizard_config_with(wizard: SetupWizard) -> CoreWizardConfig:
    """The config the widgets hold now, valid or not (to compare against the config's own messages)."""
    return wizard._candidate()


# ------------------------------------------------------------------ navigation
def test_back_next_and_step_indicator(wizard_path):
    wizard = make_wizard(wizard_path)
    assert wizard.back_button.disabled and wizard.step == 0
    assert "<b><u>1. Dataset</u></b>" in wizard.indicator.value
    for index, step in enumerate(STEPS[1:], start=1):
        wizard.next_button.click()
        assert wizard.step == index
        assert wizard.widget.children[3].children[0] is wizard._step_boxes[index]
        assert f"<b><u>{index + 1}. {html.escape(step.title)}</u></b>" in wizard.indicator.value
    assert wizard.next_button.disabled and wizard.next_button.layout.display == "none"
    assert wizard.save_button.layout.display is None and not wizard.save_button.disabled
    wizard.back_button.click()
    assert wizard.step == 3 and wizard.save_button.layout.display == "none"
    assert wizard.output.outputs == ()


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize("device, precision", [(T4, "16-mixed"), (A100, "bf16-mixed"), (CPU, "32-true")])
def test_training_step_shows_resolved_precision_and_reason(wizard_path, device, precision):
    wizard = make_wizard(wizard_path, device=device)
    decision = resolve_precision(True, "auto", device)
    assert decision.precision == precision
    assert f"{precision}, {html.escape(decision.reason)}" in wizard.notes["precision"].value
    go_to(wizard, "review")
    assert f"Precision: {precision}, {html.escape(decision.reason)}." in wizard.notes["summary"].value


def test_bf16_on_t4_is_an_inline_error_on_precision(wizard_path):
    wizard = make_wizard(wizard_path, device=T4)
    go_to(wizard, "training")
    set_value(wizard, "precision", "bf16-mixed")
    with pytest.raises(PrecisionError) as raised:
        resolve_precision(True, "bf16-mixed", T4)
    assert shown_error(wizard, "precision") == f"Mixed precision kind: {raised.value}"
    assert wizard.next_button.disabled and wizard.config.precision == "auto"
    set_value(wizard, "precision", "16-mixed")
    assert wizard.config.precision == "16-mixed" and not wizard.next_button.disabled


def test_check_model_shows_the_precision_error_of_an_impossible_saved_precision(wizard_path):
    WizardConfig(use_mixed_precision=True, precision="bf16-mixed").save(wizard_path)  # saved on an A100, say
    wizard = make_wizard(wizard_path, device=T4)
    wizard.check_button.click()
    assert wizard.output.outputs == () and "Internal error" not in wizard.message.value
    with pytest.raises(PrecisionError) as raised:
        resolve_precision(True, "bf16-mixed", T4)
    assert html.escape(f"No model check: {raised.value}") in wizard.notes["check"].value
    assert wizard.last_check is None


def test_mixed_precision_switch_off_gives_fp32_and_hides_the_kind(wizard_path):
    wizard = make_wizard(wizard_path, device=T4)
    set_value(wizard, "precision", "16-mixed")
    set_value(wizard, "use_mixed_precision", False)
    assert "32-true, fp32: mixed precision is switched off" in wizard.notes["precision"].value
    assert wizard.fields["precision"].row.layout.display == "none"  # nothing to choose with the switch off
    assert shown_error(wizard, "precision") == "" and wizard.config.use_mixed_precision is False


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_create_config_from_preset_is_defaults_plus_the_preset(wizard_path, name):
    config = make_wizard(wizard_path).create_config_from_preset(name)
    assert validate_config(config) == []
    assert config == WizardConfig(**{**WizardConfig().to_dict(), **PRESETS[name]})
    assert set(PRESETS[name]) <= set(WizardConfig().to_dict())


def test_named_presets_match_their_purpose():
    wizard = SetupWizard(interactive=False, device=T4, config_path="/nonexistent/wizard_config.json")
    tiny, t4 = wizard.create_config_from_preset("tiny"), wizard.create_config_from_preset("t4")
    assert (tiny.model_template, tiny.model_size) == ("gpt", "tiny")  # the default template, untouched
    assert (t4.model_template, t4.model_size, t4.use_mixed_precision) == ("gpt", "small", True)
    assert resolve_precision(t4.use_mixed_precision, t4.precision, T4).precision == "16-mixed"
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        wizard.create_config_from_preset("huge")


def test_preset_menu_fills_the_fields_and_keeps_other_choices(wizard_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "val_split", 0.25)
    wizard.preset_menu.value = "t4"
    assert wizard.output.outputs == ()
    assert wizard.fields["model_size"].value == "small"
    assert wizard.fields["batch_size"].value == PRESETS["t4"]["batch_size"]
    assert wizard.config.val_split == 0.25  # not part of the preset
    assert wizard.config.batch_size == PRESETS["t4"]["batch_size"]
    assert wizard.preset_menu.value == ""
    assert "Applied preset &#x27;t4&#x27;" in wizard.message.value


def test_presets_keep_a_classifier_a_classifier(wizard_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "task", "classification")
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", "reviews.csv")
    set_value(wizard, "model_template", "classifier")
    wizard.preset_menu.value = "small"
    assert wizard.output.outputs == ()
    assert (wizard.config.task, wizard.config.model_template, wizard.config.model_size) == \
        ("classification", "classifier", "small")


# ------------------------------------------------------------------ model step
def test_model_step_counts_parameters_and_checks_forward_backward(wizard_path):
    wizard = make_wizard(wizard_path, device=T4)
    go_to(wizard, "model")
    params = sum(p.numel() for p in build_model(wizard.config, EMBEDDED_CHAR_VOCAB).parameters())
    assert params == 822_912
    assert "822.9K parameters" in wizard.notes["model"].value
    assert f"vocabulary {EMBEDDED_CHAR_VOCAB}" in wizard.notes["model"].value
    wizard.check_button.click()
    assert wizard.output.outputs == ()
    note = wizard.notes["check"].value
    loss = wizard.last_check[1].loss
    assert (f"An untrained model should score a loss of about {math.log(EMBEDDED_CHAR_VOCAB):.1f} (it guesses among "
            f"{EMBEDDED_CHAR_VOCAB} outputs); yours: {loss:.2f} — as expected.") in html.unescape(note)
    assert "Training memory at Batch size 16 and Sequence length 128, in fp16 mixed precision: about " in note
    assert "batch_size=" not in note and "ln " not in note
    assert "fits in Tesla T4 memory (16.0 GB, 90% usable)" in note
    _, check = wizard.last_check
    assert check.parameters == params and check.weights_bytes == 16 * params
    assert abs(check.loss - math.log(EMBEDDED_CHAR_VOCAB)) < 0.5  # an untrained model guesses uniformly
    set_value(wizard, "model_size", "small")
    assert "Settings changed since the last check" in wizard.notes["check"].value


def test_model_step_inspects_the_model_with_check_lines_and_plots(wizard_path, tmp_path):
    wizard = make_wizard(wizard_path, device=T4, run_root=tmp_path / "workspace")
    go_to(wizard, "model")
    assert wizard.inspect_button in wizard._step_boxes[2].children
    wizard.inspect_button.click()  # on this machine's CPU; the precision is the T4's (fp16)
    assert wizard.output.outputs == ()
    config, report = wizard.last_inspection
    assert config == wizard.config and report.exit_code == 0
    note = wizard.notes["inspect"].value
    for name in ("shapes", "causality", "gradient_flow", "fp16", "overfit_batch", "memory", "attention"):
        assert f"<code>{name}</code> <b style='color:#2e7d32'>pass</b>" in note
    assert "Precision: 16-mixed" in note and "Tesla T4 memory" in note
    images = wizard.inspect_plots.children
    assert [image.format for image in images] == ["png"] * 3 and all(i.value[:4] == b"\x89PNG" for i in images)
    assert report.folder == tmp_path / "workspace" / "runs" / "default" / "inspect"
    assert (report.folder / "report.json").exists()
    set_value(wizard, "model_size", "small")
    assert "Settings changed since the last inspection" in wizard.notes["inspect"].value
    assert wizard.inspect_plots.children == ()


def test_inspect_names_a_model_that_sees_the_future_and_the_precision_note_an_fp16_finding(wizard_path, tmp_path):
    model = tmp_path / "leaky.py"  # attention without a causal mask, and a layer that overflows fp16
    model.write_text("""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tok = nn.Embedding(config["vocab_size"], 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, config["vocab_size"])

    def forward(self, idx):
        x = self.tok(idx)
        x = x + self.attn(x, x, x, need_weights=False)[0] * 1e6
        return self.head(self.norm(x))
""")
    wizard = make_wizard(wizard_path, device=T4, run_root=tmp_path / "workspace")
    go_to(wizard, "model")
    set_value(wizard, "model_source", "file")
    set_value(wizard, "model_path", str(model))
    wizard.inspect_button.click()
    assert wizard.output.outputs == ()
    note = wizard.notes["inspect"].value
    assert "<code>causality</code> <b style='color:#c62828'>fail</b> causality fails at position 1" in note
    assert "<code>fp16</code> <b style='color:#c62828'>fail</b> needs bf16" in note  # the T4 run uses fp16
    go_to(wizard, "training")
    assert "the fp16 check found: needs bf16" in wizard.notes["precision"].value


def test_memory_estimate_grows_with_batch_and_reports_when_it_does_not_fit(wizard_path):
    small_gpu = DeviceInfo("cuda", "Small GPU", (6, 1), 64 * 2**20)  # fp32 (no tensor cores): a quick check
    config = WizardConfig(batch_size=64)
    decision = resolve_precision(True, "auto", small_gpu)
    big, half = measure_model(config, decision), measure_model(config.replace(batch_size=32), decision)
    assert 1.8 < big.activation_bytes / half.activation_bytes < 2.2
    assert big.fits is False
    wizard = make_wizard(wizard_path, device=small_gpu)
    set_value(wizard, "batch_size", 64)
    wizard.check_button.click()
    assert "does NOT fit in Small GPU memory" in wizard.notes["check"].value


def test_review_step_estimates_the_run_time_on_this_device(wizard_path, tmp_path):
    wizard = make_wizard(wizard_path, device=CPU, run_root=tmp_path / "workspace")
    for name, value in (("max_seq_len", 32), ("batch_size", 8), ("max_epochs", 1)):
        set_value(wizard, name, value)
    go_to(wizard, "review")
    review = wizard._step_boxes[-1].children
    assert wizard.estimate_button in review and wizard.notes["estimate"] in review
    assert wizard.estimate_button.description == "Estimate time"
    wizard.estimate_button.click()
    assert wizard.output.outputs == ()
    config, estimate = wizard.last_estimate
    assert config == wizard.config and estimate.batch_size == 8 and estimate.validations == 1
    note = html.unescape(wizard.notes["estimate"].value)
    assert "Estimate: " in note and "timed on CPU" in note and "fits in one Colab session" in note
    assert f"{estimate.total_steps:,} steps + 1 validation(s)" in note
    assert (tmp_path / "workspace" / "runs" / "default").is_dir(), "data cached in the run folder, not the cwd"
    set_value(wizard, "batch_size", 4)
    assert "Settings changed since the last estimate" in wizard.notes["estimate"].value


def test_review_estimate_refuses_a_batch_the_device_cannot_hold_and_names_the_one_that_fits(wizard_path, tmp_path):
    # A CPU with 300 MB of memory, injected: the memory model is measured for real, the capacity is not.
    small = DeviceInfo("cpu", "Small CPU", None, 300 * 2**20)
    wizard = make_wizard(wizard_path, device=small, run_root=tmp_path)
    go_to(wizard, "training")
    set_value(wizard, "batch_size", 4096)
    go_to(wizard, "review")
    wizard.estimate_button.click()
    assert wizard.output.outputs == () and wizard.last_estimate is None
    note = html.unescape(wizard.notes["estimate"].value)
    assert note.count("No estimate: batch_size=4096 needs about ") == 1, note
    assert "more than Small CPU memory (300.0 MB, 90% usable). The largest batch that fits is " in note
    assert "gradient_accumulation_steps=" in note and "keeps the effective batch" in note


def test_tokenizer_step_says_how_many_ids_the_model_sees(wizard_path):
    wizard = make_wizard(wizard_path)
    assert f"{EMBEDDED_CHAR_VOCAB} token ids (distinct characters in the dataset)" in wizard.notes["tokenizer"].value
    set_value(wizard, "tokenizer_strategy", "byte")
    assert "256 token ids (byte tokenizer)" in wizard.notes["tokenizer"].value


# ------------------------------------------------------------------ dataset step
def simulate_upload(upload: ipywidgets.FileUpload, name: str, content: bytes) -> None:
    """What the browser sends when a file is picked (the browser itself cannot run here)."""
    if IPYWIDGETS_7:  # 7.x: metadata and data lists, published as a dict when the counter moves
        upload.metadata = [{"name": name, "type": "text/plain", "size": len(content), "lastModified": 0}]
        upload.data = [content]
        upload._counter += 1
    else:  # 8.x: a tuple of dicts with the content as a memoryview
        upload.value = ({"name": name, "type": "text/plain", "size": len(content), "content": memoryview(content),
                         "last_modified": datetime.now(timezone.utc)},)


def test_file_upload_is_saved_beside_the_saved_config_and_selected(wizard_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # the kernel's working folder must not decide where uploads go
    wizard = make_wizard(wizard_path)
    set_value(wizard, "dataset_source", "upload")
    assert wizard.next_button.disabled  # no file yet
    simulate_upload(wizard.upload, "../my corpus.txt", b"abcabc\nab\n")
    assert wizard.output.outputs == ()
    saved = wizard_path.resolve().parent / "uploads" / "my corpus.txt"  # the workspace, on Drive when it is on
    assert saved.read_bytes() == b"abcabc\nab\n"
    assert (wizard.config.dataset_source, wizard.config.dataset_path) == ("upload", str(saved))
    assert wizard.fields["dataset_path"].value == str(saved)
    assert "4 token ids (distinct characters in the dataset)" in wizard.notes["tokenizer"].value
    assert "Uploaded ../my corpus.txt (10 bytes)" in wizard.message.value
    assert not wizard.next_button.disabled


@pytest.mark.parametrize("content, expected", [
    (b"", "The upload 'big.txt' arrived empty. Colab's upload button delivers files of about 1 MB or more"),
    (b"a" * 1_000_001, "The upload 'big.txt' is 1,000,001 bytes, over the 1,000,000-byte limit for uploads"),
])
def test_empty_or_oversize_upload_is_refused_with_a_pointer_to_drive(wizard_path, content, expected):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "dataset_source", "upload")
    # The limit is stated beside the button, and only where the button is.
    assert wizard.upload_limit.layout.display is None
    assert "Uploads up to 1 MB: Colab&#x27;s upload button delivers larger files empty" in wizard.upload_limit.value
    assert "Google Drive" in wizard.upload_limit.value
    assert wizard.upload_limit in wizard._step_boxes[0].children
    simulate_upload(wizard.upload, "big.txt", content)
    assert expected in html.unescape(wizard.message.value)
    assert "put a large file on Google Drive" in wizard.message.value or "Put it on Google Drive" in wizard.message.value
    assert "/content/drive/MyDrive/data/train.txt" in wizard.message.value
    assert not (wizard_path.resolve().parent / "uploads").exists(), "nothing is saved"
    assert wizard.config.dataset_path == "" and wizard.next_button.disabled
    set_value(wizard, "dataset_source", "embedded")
    assert wizard.upload_limit.layout.display == "none"


def test_hugging_face_is_offered_only_with_the_datasets_library(wizard_path):
    wizard = make_wizard(wizard_path)
    options = [value for _, value in wizard.fields["dataset_source"].input.options]
    if importlib.util.find_spec("datasets") is None:
        assert options == ["embedded", "file", "upload"]
        assert "pip install datasets" in wizard.fields["dataset_source"].help.value  # where the choice is made
        assert wizard.notes["dataset"].value == ""  # not a note on every view of the step
    else:  # CI installs it for the Hugging Face data tests
        assert options == ["embedded", "file", "upload", "huggingface"]
        assert "install datasets" not in wizard.fields["dataset_source"].help.value + wizard.notes["dataset"].value
    wizard_path.write_text(json.dumps({"dataset_source": "huggingface", "dataset_name": "imdb"}))
    reloaded = make_wizard(wizard_path)  # a config saved where datasets was installed is kept as it is
    assert reloaded.config.dataset_source == "huggingface"
    assert reloaded.fields["dataset_source"].value == "huggingface"


# ------------------------------------------------------------------ save and reload
def test_save_then_a_new_wizard_starts_from_the_file(wizard_path, tmp_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "val_split", 0.2)
    go_to(wizard, "training")
    set_value(wizard, "batch_size", 8)
    set_value(wizard, "learning_rate", 5e-4)
    set_value(wizard, "use_mixed_precision", False)
    go_to(wizard, "review")
    set_value(wizard, "output_dir", str(tmp_path / "drive" / "run1"))
    wizard.save_button.click()
    assert wizard.output.outputs == ()
    saved = json.loads(wizard_path.read_text())
    assert saved == {k: v for k, v in wizard.config.to_dict().items() if k in wizard.config.relevant_names()}
    assert f"Saved to {html.escape(str(wizard_path))}" in wizard.message.value
    set_value(wizard, "max_epochs", 7)
    assert "Changed since the last Save: press Save again" in wizard.message.value
    set_value(wizard, "max_epochs", 5)

    again = make_wizard(wizard_path, preset="t4")  # the saved clicks win over the notebook's preset
    assert again.config == wizard.config
    assert again.fields["batch_size"].value == 8 and again.fields["use_mixed_precision"].value is False
    assert f"Loaded your saved choices from {html.escape(str(wizard_path))}" in again.message.value


def test_save_writes_the_last_valid_config_and_button_waits_for_fixes(wizard_path):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "review")
    set_value(wizard, "output_dir", "")
    assert shown_error(wizard, "output_dir") == "Output folder (output_dir) is empty; give a folder for checkpoints"
    assert wizard.save_button.disabled
    assert "1 setting(s) still need fixing" in wizard.notes["summary"].value
    assert wizard.save() == wizard_path
    assert WizardConfig.load(wizard_path) == WizardConfig()


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"batch_size": 8, "amp_enabled": True}), "unknown field &#x27;amp_enabled&#x27;"),
    (json.dumps({"batch_size": "8"}), "Batch size (batch_size) must be a whole number, not &#x27;8&#x27;"),
    (json.dumps([1, 2]), "expected a JSON object of config fields, got list"),
])
def test_corrupt_or_outdated_file_is_reported_and_kept_until_save(wizard_path, content, expected):
    wizard_path.write_text(content)
    wizard = make_wizard(wizard_path)
    assert wizard.config == WizardConfig()
    assert "Could not use the saved config" in wizard.message.value and expected in wizard.message.value
    assert "the file stays as it is until you press Save" in wizard.message.value
    assert wizard_path.read_text() == content
    go_to(wizard, "review")
    wizard.save_button.click()
    assert WizardConfig.load(wizard_path) == WizardConfig()


def test_unwritable_save_path_is_reported(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    wizard = make_wizard(blocker / "wizard_config.json")
    go_to(wizard, "review")
    wizard.save_button.click()
    assert wizard.output.outputs == ()
    assert "Could not save to" in wizard.message.value


# ------------------------------------------------------------------ headless
def test_headless_returns_saved_preset_or_default_and_prints_instead_of_widgets(wizard_path, capsys):
    assert SetupWizard(config_path=wizard_path, interactive=False).config == WizardConfig()
    headless = SetupWizard(config_path=wizard_path, interactive=False, preset="tiny", device=CPU)
    assert headless.config == WizardConfig().replace(**PRESETS["tiny"])
    headless.show()
    printed = capsys.readouterr().out
    assert printed.startswith("Setup wizard not shown (interactive=False was passed). Started from preset 'tiny'.")
    assert "Precision: 32-true, fp32: no CUDA GPU (CPU)" in printed and "  max_epochs = 3" in printed
    WizardConfig(batch_size=4).save(wizard_path)
    assert SetupWizard(config_path=wizard_path, interactive=False, preset="tiny").config.batch_size == 4


def test_interactive_auto_detection(monkeypatch):
    assert detect_interactive() == (False, "no Jupyter kernel runs this code")
    monkeypatch.setenv("CI", "true")
    assert detect_interactive() == (False, "the CI environment variable is set")
    assert SetupWizard(config_path="/nonexistent/x.json").interactive is False


def test_in_a_kernel_headless_by_nbclient_and_displayed_when_interactive(tmp_path, monkeypatch):
    """A real kernel run by nbclient (as nbval and papermill do), with CI unset."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    path = str(tmp_path / "wizard_config.json")
    cells = ["from utils.ui.setup_wizard import SetupWizard\n"
             f"wizard = SetupWizard(config_path={path!r}, preset='tiny')\nwizard",
             "print(wizard.config.model_size)",
             f"SetupWizard(config_path={path!r}, interactive=True)"]  # a cell ending in the wizard shows it
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    first = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert first.startswith("Setup wizard not shown (the notebook is executed by a client that cannot prompt")
    assert nb.cells[1].outputs[0]["text"] == "tiny\n"
    shown = [o for o in nb.cells[2].outputs if o.get("output_type") == "display_data"]
    # Two displays: the wizard, then its error area apart from it, so that an Output widget that fails
    # to render (classic Notebook 6 with widgetsnbextension 3.6.10) cannot take the wizard with it.
    assert len(shown) == 2 and all("model_id" in o["data"]["application/vnd.jupyter.widget-view+json"] for o in shown)
    assert "VBox" in shown[0]["data"]["text/plain"] and "Output" in shown[1]["data"]["text/plain"]


# ------------------------------------------------------------------ API and callback errors
def test_validate_config_uses_the_configs_own_rules():
    assert validate_config(WizardConfig()) == []
    bad = WizardConfig(batch_size=0, learning_rate=2.0)
    assert validate_config(bad) == field_errors(bad)
    assert validate_config(WizardConfig(batch_size="8")) == [
        ("batch_size", "Batch size (batch_size) must be a whole number, not '8'")]


def test_callback_error_is_shown_in_the_output_widget(wizard_path):
    wizard = make_wizard(wizard_path)

    def buggy_handler(button):  # stands for a bug in one of the wizard's handlers
        raise RuntimeError("boom")

    wizard.back_button.on_click(wizard._guard(buggy_handler))  # wrapped as the wizard wraps its own
    wizard.back_button.click()
    stderr = "".join(o["text"] for o in wizard.output.outputs)
    assert "RuntimeError: boom" in stderr and "buggy_handler" in stderr
    assert "Internal error in buggy_handler: boom (traceback below)." in wizard.message.value


def test_display_hooks_exist_for_both_ipywidgets_versions(wizard_path):
    wizard = make_wizard(wizard_path)
    assert callable(wizard._ipython_display_) and isinstance(wizard.widget, ipywidgets.VBox)
    assert "wizard" in wizard.widget._dom_classes
    assert sys.modules["ipywidgets"].__version__.split(".")[0] in ("7", "8")


def test_vocab_estimate_follows_the_classifier_pad_and_a_pretrained_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from utils.data.spec import vocab_size_for

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(["hello world, some text"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "tokenizer.json"))
    pretrained = CoreWizardConfig(tokenizer_strategy="pretrained", tokenizer_path=str(tmp_path))
    assert vocab_size_for(pretrained) == (raw.get_vocab_size(), "the pretrained tokenizer")
    assert vocab_size_for(CoreWizardConfig(tokenizer_strategy="byte"))[0] == 256
    assert vocab_size_for(CoreWizardConfig(tokenizer_strategy="byte", task="classification"))[0] == 257


@pytest.mark.parametrize("count, shown", [(1, False), (4, True)])
def test_multi_device_settings_show_only_where_several_gpus_are_visible(wizard_path, count, shown):
    wizard = make_wizard(wizard_path, device=T4, device_count=count)  # the GPU count is injected: none is here
    for name in ("devices", "num_nodes", "strategy"):
        assert (wizard.fields[name].row.layout.display != "none") is shown, name
    if shown:
        set_value(wizard, "devices", 4)
        assert wizard.config.devices == 4


# ------------------------------------------------------------------ the user's words, relevance and the plan
def test_abandoned_choices_neither_block_nor_travel_with_the_saved_file(wizard_path):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "model")
    set_value(wizard, "model_source", "gist")
    set_value(wizard, "gist_id", "not a gist")
    assert shown_error(wizard, "gist_id").startswith("Gist id or URL (gist_id): 'not a gist' is not a Gist id or URL")
    assert wizard.next_button.disabled
    set_value(wizard, "model_source", "template")  # the Gist is abandoned: its field hides, its error goes
    assert wizard.errors == {} and not wizard.next_button.disabled
    assert wizard.fields["gist_id"].row.layout.display == "none"
    go_to(wizard, "review")
    wizard.save_button.click()
    saved = json.loads(wizard_path.read_text())
    assert "gist_id" not in saved and "model_path" not in saved and "dataset_path" not in saved
    assert "vocab_size" not in saved and "tokenizer_path" not in saved and "wandb_project" not in saved
    assert saved["model_source"] == "template" and saved["model_template"] == "gpt"
    assert set(saved) == set(WizardConfig().relevant_names())
    assert WizardConfig.load(wizard_path) == WizardConfig()  # loading gives the left-out fields their defaults


def test_built_in_corpus_is_a_menu_and_the_text_box_is_for_a_hub_name(wizard_path):
    wizard = make_wizard(wizard_path)
    corpus, name = wizard.corpus, wizard.fields["dataset_name"]
    assert corpus.row.layout.display is None and name.row.layout.display == "none"
    assert corpus.input.description == "Built-in corpus" and "wizard-field-embedded_corpus" in corpus.input._dom_classes
    assert corpus.input.options[0][1] == "python_reference" and corpus.input.label == "Python Language Reference"
    if "huggingface" in [v for _, v in wizard.fields["dataset_source"].input.options]:
        set_value(wizard, "dataset_source", "huggingface")
        assert corpus.row.layout.display == "none" and name.row.layout.display is None
        assert name.value == "" and shown_error(wizard, "dataset_name").startswith("Dataset name (dataset_name) is "
                                                                                   "empty")
        set_value(wizard, "dataset_source", "embedded")
    assert wizard.errors == {} and wizard.config.dataset_name == "python_reference"


def test_a_message_sits_under_its_field_wraps_and_leaves_the_input_its_width(wizard_path):
    wizard = make_wizard(wizard_path)
    field = wizard.fields["dataset_path"]
    width = field.input.layout.width
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", "/content/drive/MyDrive/a/very/long/folder/name/data.xlsx")
    assert field.row.children == (field.input, field.error, field.help)  # input, then its message, then help
    assert field.error.layout.display is None and "white-space:normal" in field.error.value
    assert field.input.layout.width == width and field.input.layout.flex == "0 0 auto"
    assert shown_error(wizard, "dataset_path").startswith("File path (dataset_path) '/content/drive/MyDrive/a/very/")
    set_value(wizard, "dataset_path", "/content/data.txt")
    assert field.error.layout.display == "none"  # no empty line under a valid field


def test_changes_after_a_save_are_a_warning_not_a_success(wizard_path):
    from utils.ui.fields import SUCCESS_COLOR, WARNING_COLOR

    wizard = make_wizard(wizard_path)
    wizard.save()
    assert SUCCESS_COLOR in wizard.message.value
    set_value(wizard, "val_split", 0.2)
    assert "Changed since the last Save" in wizard.message.value and WARNING_COLOR in wizard.message.value


def _plan(wizard: SetupWizard) -> str:
    go_to(wizard, "review")
    return html.unescape(wizard.notes["summary"].value)


def _prepared_sizes(config: CoreWizardConfig):
    """The sizes training will see, from the same functions train() calls."""
    from utils.data import prepare_data
    from utils.training.builder import build_dataloaders, total_steps
    from utils.data.spec import build_data_spec

    data = prepare_data(build_data_spec(config))
    loader, _ = build_dataloaders(config, data.train, data.val, pin_memory=False)
    return data, total_steps(config, len(loader))


def test_review_plan_for_a_language_model(wizard_path, tmp_path):
    wizard = SetupWizard(config_path=wizard_path, interactive=True, device=CPU, run_root=tmp_path)
    go_to(wizard, "training")
    set_value(wizard, "batch_size", 32)
    plan = _plan(wizard)
    data, steps = _prepared_sizes(wizard.config.replace(output_dir=str(tmp_path / "runs" / "default")))
    assert steps == 510  # 5 epochs of 102 batches of 32: half the 1,020 steps the default batch of 16 takes
    assert ("Trains the tiny 'gpt' language model from templates/ (822.9K parameters) on the built-in corpus "
            "Python Language Reference (465 KB of English technical prose): ") in plan
    assert (f": {data.num_tokens:,} tokens, cut into {len(data.train):,} training sequences of 128 tokens and "
            f"{len(data.val):,} held out for validation, with the characters tokenizer ({EMBEDDED_CHAR_VOCAB} token "
            "ids).") in plan
    assert "Each optimizer step sees 32 sequences (batch 32 x 1 accumulation); 5 epochs = 510 optimizer steps." in plan
    assert "Precision: 32-true, fp32: no CUDA GPU" in plan
    assert f"Starts a new run in {tmp_path / 'runs' / 'default'}." in plan
    assert "Settings that differ from the defaults</b><br>Batch size: 32 (default: 16)" in plan


def test_review_plan_for_a_classifier(wizard_path, tmp_path):
    rows = ["text,label"] + [f"{'good fine great' if i % 2 else 'bad awful poor'} review number {i},"
                             f"{'pos' if i % 2 else 'neg'}" for i in range(200)]
    csv = tmp_path / "reviews.csv"
    csv.write_text("\n".join(rows) + "\n")
    wizard = SetupWizard(config_path=wizard_path, interactive=True, device=T4, run_root=tmp_path)
    set_value(wizard, "task", "classification")
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", str(csv))
    go_to(wizard, "model")
    set_value(wizard, "model_template", "classifier")
    go_to(wizard, "training")
    set_value(wizard, "max_seq_len", 32)
    set_value(wizard, "gradient_accumulation_steps", 2)
    plan = _plan(wizard)
    data, steps = _prepared_sizes(wizard.config.replace(output_dir=str(tmp_path / "runs" / "default")))
    assert "Trains the tiny 'classifier' text classifier from templates/ (" in plan
    assert (f"on reviews.csv: {data.num_tokens:,} tokens in 200 texts, {len(data.train)} for training and "
            f"{len(data.val)} held out for validation, 2 labels (neg, pos) from the column 'label'") in plan
    assert f"Each optimizer step sees 32 texts (batch 16 x 2 accumulation); 5 epochs = {steps:,} optimizer steps." \
        in plan
    assert "Precision: 16-mixed, " in plan
    for line in ("Task: Text classification (default: Language model)", "Data source: A file (default: Built-in "
                 "corpus)", f"File path: {str(csv)!r} (default: '')", "Template: 'classifier' (default: 'gpt')",
                 "Sequence length: 32 (default: 128)", "Accumulation steps: 2 (default: 1)"):
        assert line in plan, line


# ------------------------------------------------------------------ what users hit (issue 20, item 22)
def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def test_the_plan_never_nests_parentheses(wizard_path, tmp_path):
    wizard = SetupWizard(config_path=wizard_path, interactive=True, device=CPU, run_root=tmp_path)
    plan = _plan(wizard).split("Settings that differ")[0]
    assert "Python Language Reference" in plan and _paren_depth(plan) == 1, plan
    wizard._go(0)
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", str(tmp_path / "not-there.txt"))  # the plan's note holds the OS's words
    wizard.errors.clear()
    plan = html.unescape(wizard._plan_html(wizard._candidate(), 100))
    assert "size not counted yet" in plan and _paren_depth(plan.split("Settings that differ")[0]) == 1, plan


def test_the_corpus_menu_shows_a_title_that_fits_and_its_help_says_the_rest(wizard_path):
    wizard = make_wizard(wizard_path)
    assert [label for label, _ in wizard.corpus.input.options] == ["Python Language Reference"]
    assert "465 KB of English technical prose" in wizard.corpus.help.value


def test_the_upload_button_sits_under_the_data_source(wizard_path):
    wizard = make_wizard(wizard_path)
    rows = list(wizard._step_boxes[0].children)
    source = rows.index(wizard.fields["dataset_source"].row)
    assert rows[source + 1] is wizard.upload and rows[source + 2] is wizard.upload_limit


def test_a_file_path_error_does_not_stay_red_once_upload_is_chosen(wizard_path):
    wizard = make_wizard(wizard_path)
    set_value(wizard, "dataset_source", "file")
    set_value(wizard, "dataset_path", "")
    assert wizard.fields["dataset_path"].error.layout.display is None  # red under the field
    set_value(wizard, "dataset_source", "upload")
    assert wizard.fields["dataset_path"].row.layout.display == "none"
    assert "Press <b>Upload file</b>" in wizard.notes["dataset"].value and wizard.next_button.disabled


@pytest.mark.parametrize("source, value", [("file", "my_model.py"), ("gist", "https://gist.github.com/u/abc")])
def test_dropout_shows_for_templates_only(wizard_path, source, value):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "model")
    assert wizard.fields["dropout"].row.layout.display is None
    set_value(wizard, "model_source", source)
    set_value(wizard, "model_path" if source == "file" else "gist_id", value)
    assert wizard.fields["dropout"].row.layout.display == "none"


def test_check_model_is_disabled_while_the_model_step_is_blocked(wizard_path):
    wizard = make_wizard(wizard_path)
    go_to(wizard, "model")
    assert not wizard.check_button.disabled
    set_value(wizard, "dropout", 1.5)
    assert wizard.next_button.disabled and wizard.check_button.disabled
    set_value(wizard, "dropout", 0.1)
    assert not wizard.check_button.disabled


def test_check_model_says_when_the_untrained_loss_is_off(wizard_path):
    from utils.ui.model_check import ModelCheck, describe_check

    wizard = make_wizard(wizard_path, device=T4)
    check = ModelCheck(parameters=10, vocab_size=256, loss=9.0, seconds=0.1, weights_bytes=160, activation_bytes=10,
                       capacity_bytes=None, capacity_name="nothing")
    text = describe_check(check, wizard.config, resolve_precision(True, "auto", T4))
    assert "should score a loss of about 5.5 (it guesses among 256 outputs); yours: 9.00 — higher than expected" in text


def test_the_preset_menu_says_what_each_preset_is_for(wizard_path):
    wizard = make_wizard(wizard_path)
    labels = dict((value, label) for label, value in wizard.preset_menu.options)
    assert labels["tiny"].startswith("tiny — CPU-friendly") and labels["t4"].startswith("t4 — Colab's free T4 GPU")


def test_a_gpu_preset_on_a_cpu_says_so_in_words(wizard_path):
    from utils.ui.fields import WARNING_COLOR

    wizard = make_wizard(wizard_path, device=CPU)
    wizard.preset_menu.value = "t4"
    message = html.unescape(wizard.message.value)
    assert "Mixed precision on, Mixed precision kind Auto" in message and "True" not in message
    assert "'t4' is sized for a GPU, and this runtime has none (CPU)" in message and WARNING_COLOR in message
    on_gpu = make_wizard(wizard_path, device=T4)
    on_gpu.preset_menu.value = "t4"
    assert "sized for a GPU" not in on_gpu.message.value


def test_the_start_message_is_gone_after_the_first_step(wizard_path):
    wizard = make_wizard(wizard_path)
    assert "Started from the defaults." in wizard.message.value
    wizard.next_button.click()
    assert wizard.message.value == ""


def test_a_new_output_folder_keeps_the_estimate_and_the_check(wizard_path, tmp_path):
    wizard = SetupWizard(config_path=wizard_path, interactive=True, device=CPU, run_root=tmp_path)
    go_to(wizard, "training")
    set_value(wizard, "max_epochs", 1)
    set_value(wizard, "batch_size", 4)
    wizard._go(2)  # the model step
    wizard.check_button.click()
    go_to(wizard, "review")
    wizard.estimate_button.click()
    estimate = wizard.notes["estimate"].value
    set_value(wizard, "output_dir", str(tmp_path / "elsewhere"))
    assert wizard.notes["estimate"].value == estimate and "Settings changed" not in wizard.notes["check"].value
    set_value(wizard, "output_dir", "")  # a bad value on the way: compared without validating it
    assert wizard.output.outputs == () and "output_dir" in wizard.errors
    set_value(wizard, "output_dir", str(tmp_path / "elsewhere"))
    set_value(wizard, "batch_size", 8)
    assert "Settings changed since the last estimate" in wizard.notes["estimate"].value

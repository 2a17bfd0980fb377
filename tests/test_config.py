"""WizardConfig: round-trips exactly, names every bad field with its value and what is allowed, and
carries each field's words and rules in its metadata; validating needs no torch."""

import json
import os
import subprocess
import sys
import typing
from dataclasses import fields

import pytest

from tests.conftest import REPO_ROOT
from utils import config as config_module
from utils.config import SETTINGS, ConfigError, WizardConfig, apply_overrides, field_errors, unused_settings
from utils.ui.setup_wizard import WizardConfig as ReExported


def test_reexported_from_the_wizard_module():
    assert ReExported is WizardConfig


def test_defaults_are_valid_and_documented():
    assert WizardConfig().problems() == []
    c = WizardConfig()
    assert (c.batch_size, c.val_split, c.use_mixed_precision, c.gradient_accumulation_steps, c.gradient_clip_val) \
        == (16, 0.1, True, 1, 1.0)


def test_save_load_round_trip_is_exact(tmp_path):
    config = WizardConfig(model_size="small", learning_rate=2.5e-4, max_steps=123, precision="16-mixed",
                          early_stopping_patience=3, wandb_mode="offline", output_dir=str(tmp_path / "x"))
    path = config.save(tmp_path / "cfg" / "config.json")
    loaded = WizardConfig.load(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert json.loads(path.read_text())["max_steps"] == 123


def test_validate_lists_every_bad_field_with_value_and_rule():
    config = WizardConfig(learning_rate=-0.1, batch_size=0, val_split=1.5, model_template="bert")
    with pytest.raises(ConfigError) as err:
        config.validate()
    msg = str(err.value)
    assert "Learning rate (learning_rate) must be > 0 and <= 1, not -0.1" in msg
    assert "Batch size (batch_size) must be >= 1, not 0" in msg
    assert "Validation split (val_split) must be > 0 and < 1, not 1.5" in msg
    assert "Template (model_template) 'bert' is unknown; choose one of 'gpt'" in msg
    assert len(err.value.problems) == 4


@pytest.mark.parametrize("field, value, expected", [
    ("val_split", 0.0, "Validation split (val_split) must be > 0 and < 1, not 0.0 (e.g. 0.1)"),
    ("max_seq_len", 1, "Sequence length (max_seq_len) must be >= 2, not 1"),
    ("gradient_accumulation_steps", 0, "Accumulation steps (gradient_accumulation_steps) must be >= 1, not 0"),
    ("gradient_clip_val", -1.0, "Gradient clipping (gradient_clip_val) must be >= 0, not -1.0"),
    ("precision", "fp16", "Mixed precision kind (precision) cannot be 'fp16'; choose one of 'auto', '16-mixed', "
                          "'bf16-mixed', '32-true' ('fp16' is spelled '16-mixed' here)"),
    ("precision", "BF16", "('BF16' is spelled 'bf16-mixed' here)"),
    ("model_size", "huge", "Model size (model_size) cannot be 'huge'"),
    ("max_steps", 0, "Max steps (max_steps) must be >= 1, not 0 (or null for no limit)"),
    ("dataset_source", "web", "Data source (dataset_source) cannot be 'web'"),
    ("wandb_project", "My Project", "W&B project (wandb_project) 'My Project' must be lowercase words joined by "
                                    "hyphens, e.g. 'my-project'"),
    ("output_dir", " ", "Output folder (output_dir) is empty"),
])
def test_each_rule_has_its_message(field, value, expected):
    logged = {"wandb_mode": "offline"}  # the W&B names matter only when W&B logs
    problems = WizardConfig(**{**logged, field: value}).problems()
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_switch_and_the_kind_of_mixed_precision_cannot_contradict():
    # precision only names a kind of mixed precision; with the switch off it has nothing to choose
    assert WizardConfig(use_mixed_precision=False, precision="bf16-mixed").problems() == []
    fp32 = WizardConfig(precision="32-true")  # the older spelling of fp32 is the switch turned off
    assert (fp32.use_mixed_precision, fp32.precision) == (False, "auto")
    assert WizardConfig.from_dict({"precision": "32-true"}) == fp32


def test_file_source_needs_a_path():
    assert WizardConfig(dataset_source="file").problems() == [
        "File path (dataset_path) is empty; give the path of a .txt, .csv or .jsonl file"]


def test_wrong_types_are_named_not_coerced():
    with pytest.raises(ConfigError) as err:
        WizardConfig.from_dict({"batch_size": "16", "use_mixed_precision": 1, "learning_rate": True})
    msg = str(err.value)
    assert "Batch size (batch_size) must be a whole number, not '16'" in msg
    assert "Mixed precision (use_mixed_precision) must be true or false, not 1" in msg
    assert "Learning rate (learning_rate) must be a number, not True" in msg


def test_ints_are_accepted_for_float_fields():
    assert WizardConfig.from_dict({"learning_rate": 1}).learning_rate == 1


def test_unknown_keys_in_a_loaded_file_are_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**WizardConfig().to_dict(), "lr": 0.1}))
    with pytest.raises(ConfigError, match=r"unknown field 'lr' \(known fields: .*learning_rate"):
        WizardConfig.load(path)


def test_load_reports_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        WizardConfig.load(bad)
    with pytest.raises(FileNotFoundError, match="No config file at"):
        WizardConfig.load(tmp_path / "missing.json")


def test_a_failed_save_leaves_the_old_file(tmp_path):
    path = WizardConfig(batch_size=8).save(tmp_path / "config.json")
    before = path.read_text()
    with pytest.raises(ConfigError):
        WizardConfig(batch_size=-1).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp files left behind


def test_overrides_parse_json_values_and_keep_strings():
    c = apply_overrides(WizardConfig(), ["batch_size=32", "use_mixed_precision=false", "max_steps=null",
                                         "output_dir=runs/x", "learning_rate=5e-4", "dataset_path=123"])
    assert (c.batch_size, c.use_mixed_precision, c.max_steps, c.output_dir, c.learning_rate, c.dataset_path) == \
        (32, False, None, "runs/x", 5e-4, "123")


def test_override_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"--set 'batch_size' is not key=value"):
        apply_overrides(WizardConfig(), ["batch_size"])
    with pytest.raises(ConfigError, match="unknown field 'batchsize'"):
        apply_overrides(WizardConfig(), ["batchsize=3"])


# ------------------------------------------------------------------ metadata: the one source of words and rules
FIXED_CHOICES = {"task": ("lm", "classification"), "dataset_source": ("embedded", "file", "upload", "huggingface"),
                 "train_on": ("responses", "all"), "pack_sequences": ("auto", "true", "false"),
                 "tokenizer_strategy": ("char", "byte", "bpe", "pretrained"),
                 "model_source": ("template", "file", "gist", "pretrained"),
                 "model_size": ("tiny", "small", "base"), "precision": ("auto", "16-mixed", "bf16-mixed"),
                 "wandb_mode": ("disabled", "auto", "online", "offline"), "strategy": ("auto", "ddp", "fsdp"),
                 "finetune_method": ("full", "lora", "qlora"), "gradient_checkpointing": ("auto", "true", "false")}
PRETRAINED_ONLY = ("finetune_method", "gradient_checkpointing")
GROUPS = ["Task and data", "Tokenizer", "Model", "Optimisation", "Precision", "Devices", "Output and checkpoints",
          "Logging"]


def test_every_field_has_a_label_a_help_line_and_a_group():
    assert list(SETTINGS) == [f.name for f in fields(WizardConfig)]
    for name, setting in SETTINGS.items():
        assert setting.label.strip() and setting.help.strip(), name
        assert "\n" not in setting.help and len(setting.help) <= 120, name  # one line
    labels = [s.label for s in SETTINGS.values()]
    assert len(labels) == len(set(labels)), "two fields share an on-screen label"
    groups = [s.group for s in SETTINGS.values()]
    assert list(dict.fromkeys(groups)) == GROUPS
    assert groups == sorted(groups, key=GROUPS.index), "a group's fields sit together, in dataclass order"


def test_fields_with_a_fixed_set_have_labelled_choices_and_the_rest_none():
    for name, setting in SETTINGS.items():
        assert tuple(setting.choices) == FIXED_CHOICES.get(name, ()), name
        for value, label in setting.choices.items():
            assert label.strip() and label != value, (name, value)
    assert all(label.strip() for label in config_module.EMBEDDED_DATASETS.values())
    # The names other modules import are the choices themselves, not a second list.
    assert config_module.TASKS == FIXED_CHOICES["task"]
    assert config_module.PRECISIONS == FIXED_CHOICES["precision"]
    assert config_module.WANDB_MODES == FIXED_CHOICES["wandb_mode"]


def test_names_types_and_defaults_are_unchanged():
    """Saved configs and other code rely on these; metadata must not have moved any of them."""
    hints = typing.get_type_hints(WizardConfig)
    assert (hints["max_steps"], hints["checkpoint_every_minutes"], hints["use_mixed_precision"]) == \
        (typing.Optional[int], float, bool)
    c = WizardConfig()
    assert (c.task, c.dataset_source, c.tokenizer_strategy, c.vocab_size, c.model_template, c.max_steps,
            c.learning_rate, c.checkpoint_every_minutes, c.precision, c.wandb_mode, c.wandb_project) == \
        ("lm", "embedded", "char", 4096, "gpt", None, 1e-3, 5.0, "auto", "disabled", "colab-transformer-kit")
    assert len(fields(WizardConfig)) == 54  # 44 + pretrained_model + train_on + inspect + finetune_method, lora_* (4),
    # gradient_checkpointing, pack_sequences


def test_every_number_field_has_bounds_that_validation_enforces():
    hints = typing.get_type_hints(WizardConfig)
    for name, setting in SETTINGS.items():
        base = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
        if base[0] not in (int, float):
            continue
        assert setting.bounds_text(), f"{name} has no bounds"
        for edge, inside in ((setting.ge, True), (setting.gt, False), (setting.le, True), (setting.lt, False)):
            if edge is None:
                continue
            problems = dict(field_errors(WizardConfig(**{name: base[0](edge)})))
            assert (name not in problems) == inside, (name, edge, problems)
            if not inside:
                assert problems[name].startswith(f"{setting.label} ({name}) must be {setting.bounds_text()}, "
                                                 f"not {base[0](edge)!r}")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_floats_break_any_bound(value):
    problems = dict(field_errors(WizardConfig(weight_decay=value, checkpoint_every_minutes=value)))
    assert problems == {"weight_decay": f"Weight decay (weight_decay) must be >= 0, not {value!r}",
                        "checkpoint_every_minutes": f"Checkpoint every (min) (checkpoint_every_minutes) must be >= 0, "
                                                    f"not {value!r} (0 saves after every step)"}


def test_choices_accept_each_value_and_name_them_all_when_refused():
    for name, values in FIXED_CHOICES.items():
        for value in values:
            # the fine-tuning settings are a pretrained model's
            base = dict(model_source="pretrained", pretrained_model="gpt2") if name in PRETRAINED_ONLY else {}
            assert name not in dict(field_errors(WizardConfig(**{**base, name: value}))), (name, value)
    assert dict(field_errors(WizardConfig(wandb_mode="cloud")))["wandb_mode"] == \
        "Weights & Biases (wandb_mode) cannot be 'cloud'; choose one of 'disabled', 'auto', 'online', 'offline'"


def test_messages_come_in_field_order_with_the_cross_field_rules_in_place():
    config = WizardConfig(wandb_project="My_Project", seed=-1, task="classification", batch_size=0,
                          precision="fp16", wandb_mode="offline")
    assert [name for name, _ in config.errors()] == ["dataset_source", "model_template", "batch_size", "seed",
                                                     "precision", "wandb_project"]
    assert config.problems() == [message for _, message in config.errors()]


def test_errors_are_type_errors_first_then_rules():
    assert WizardConfig(batch_size="8", seed=-1).errors() == [
        ("batch_size", "Batch size (batch_size) must be a whole number, not '8'")]
    assert WizardConfig(seed=-1).errors() == [("seed", "Seed (seed) must be >= 0, not -1")]


def test_validating_imports_neither_torch_nor_lightning():
    """A typo must be reported at once: the template registry and the Gist id check are torch-free."""
    code = ("import sys; from utils.config import WizardConfig\n"
            "assert WizardConfig(batch_size=0).problems()\n"
            "assert WizardConfig(model_source='gist', gist_id='not a gist').problems()\n"
            "assert WizardConfig(model_source='gist', gist_id='alice/aa5a315d').problems() == []\n"
            "assert WizardConfig(task='classification', model_template='gpt').problems()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning'))\n"
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_data_path_the_choices_do_not_read_is_refused_and_other_unused_settings_get_a_note():
    """dataset_path without dataset_source='file' used to train on the built-in corpus without a word."""
    refusals, notes = unused_settings(WizardConfig(dataset_path="my.txt", vocab_size=8000, wandb_project="mine"))
    assert refusals == ["dataset_path='my.txt' is not used (read only with Data source (dataset_source) 'file' or "
                        "'upload'); to train on that file set dataset_source='file', or leave dataset_path empty"]
    assert notes == ["Note: vocab_size=8000 is not used (only the bpe tokenizer is trained to a size; char, byte and "
                     "pretrained ones bring their own).",
                     "Note: wandb_project='mine' is not used (Weights & Biases (wandb_mode) is 'disabled')."]
    assert unused_settings(WizardConfig(dataset_source="file", dataset_path="my.txt", tokenizer_strategy="bpe",
                                        vocab_size=8000)) == ([], [])
    for name, rules in SETTINGS.items():  # every field a choice can rule out says why
        assert (rules.when is None) == (rules.used_when == ""), name


def test_train_and_estimate_refuse_an_unread_data_path_and_say_what_is_unused(tmp_path, capsys):
    from utils.cli import main

    assert main(["--set", "dataset_path=my.txt", "--set", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "dataset_path='my.txt' is not used" in capsys.readouterr().err
    assert main(["estimate", "--set", "dataset_path=my.txt"]) == 2
    assert "dataset_path='my.txt' is not used" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["estimate", "--set", "vocab_size=8000", "--set", "model_size=tiny", "--set", "max_seq_len=16"]) == 0
    assert "Note: vocab_size=8000 is not used (only the bpe tokenizer" in capsys.readouterr().out

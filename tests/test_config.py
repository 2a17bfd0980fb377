"""WizardConfig: round-trips exactly and names every bad field with its value and what is allowed."""

import json

import pytest

from utils.config import ConfigError, WizardConfig, apply_overrides
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
    assert "learning_rate=-0.1 must be > 0 and <= 1" in msg
    assert "batch_size=0 must be >= 1" in msg
    assert "val_split=1.5 must be between 0 and 1 (exclusive)" in msg
    assert "model_template='bert' is unknown; choose one of 'gpt'" in msg
    assert len(err.value.problems) == 4


@pytest.mark.parametrize("field, value, expected", [
    ("val_split", 0.0, "val_split=0.0 must be between 0 and 1"),
    ("max_seq_len", 1, "max_seq_len=1 must be >= 2"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps=0 must be >= 1"),
    ("gradient_clip_val", -1.0, "gradient_clip_val=-1.0 must be >= 0"),
    ("precision", "fp16", "precision='fp16' is not allowed; choose one of 'auto', '32-true', '16-mixed', 'bf16-mixed'"),
    ("model_size", "huge", "model_size='huge' is not allowed"),
    ("max_steps", 0, "max_steps=0 must be >= 1 (or null for no limit)"),
    ("dataset_source", "web", "dataset_source='web' is not allowed"),
    ("wandb_project", "My Project", "wandb_project='My Project' must be lowercase words joined by hyphens, e.g. 'my-project'"),
    ("output_dir", " ", "output_dir is empty"),
])
def test_each_rule_has_its_message(field, value, expected):
    problems = WizardConfig(**{field: value}).problems()
    assert len(problems) == 1 and expected in problems[0], problems


def test_contradicting_precision_switch_is_an_error():
    problems = WizardConfig(use_mixed_precision=False, precision="bf16-mixed").problems()
    assert problems == ["precision='bf16-mixed' contradicts use_mixed_precision=False; set use_mixed_precision=True, "
                        "or precision='auto' or '32-true'"]


def test_file_source_needs_a_path():
    assert WizardConfig(dataset_source="file").problems() == [
        "dataset_path is empty; dataset_source='file' needs the path of a .txt, .csv or .jsonl file"]


def test_wrong_types_are_named_not_coerced():
    with pytest.raises(ConfigError) as err:
        WizardConfig.from_dict({"batch_size": "16", "use_mixed_precision": 1, "learning_rate": True})
    msg = str(err.value)
    assert "batch_size='16' has type str; expected int" in msg
    assert "use_mixed_precision=1 has type int; expected bool" in msg
    assert "learning_rate=True has type bool; expected float" in msg


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

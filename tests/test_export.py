"""Export round trip: train, export, delete the run, load in a fresh process elsewhere, same outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from tests.conftest import LABEL_NAMES, classification_config, fit_classifier, make_toy_classification, toy_texts
from tests.test_user_models import BUILD_MODEL_LM, MASKLESS_CLASSIFIER, write_model
from utils.config import WizardConfig
from utils.data.tokenizers import CharTokenizer
from utils.export import ExportError, export_model, export_result, kit_version, load_exported
from utils.inference import classify_texts
from utils.training import train

REPO = Path(__file__).resolve().parents[1]
PROMPT, SEED, NEW_TOKENS = "def ", 1234, 40
TEXTS = toy_texts(12, seed=99)[0] + ["", "abc ABC"]  # held out, an empty text and a mixed one

LOAD_AND_RUN = """
import json, sys
import torch
torch.set_num_threads(1)  # as in the test process (conftest): same float reductions
from utils.export import load_exported

exports, out_path, prompt, seed, new_tokens, texts = json.loads(sys.argv[1])
results = {}
for name, folder in exports.items():
    exported = load_exported(folder)
    if exported.config.task == "lm":
        results[name] = exported.generate(prompt, max_new_tokens=new_tokens, seed=seed)
    else:
        results[name] = {"labels": exported.predict(texts), "proba": exported.predict_proba(texts)}
with open(out_path, "w") as f:
    json.dump(results, f)
"""


def lm_run(tmp_path: Path, **changes) -> WizardConfig:
    return WizardConfig(**{"max_steps": 3, "max_seq_len": 32, "batch_size": 4, "val_split": 0.02,
                           "output_dir": str(tmp_path / "run"), **changes})


def exported_lm(tmp_path: Path, config: WizardConfig):
    result = train(config)
    folder = export_result(result, tmp_path / "export")
    return folder, result.generate(PROMPT, max_new_tokens=NEW_TOKENS, seed=SEED)


def exported_classifier(tmp_path: Path, data, **changes):
    config = classification_config(tmp_path, data, max_steps=20, **changes)
    trainer, module, _ = fit_classifier(config, data)
    model = module.model.eval()
    folder = export_model(model, config, data.tokenizer, tmp_path / "export", data.label_names, data.pad_id)
    probs = classify_texts(model, data.tokenizer, TEXTS, config.max_seq_len, data.pad_id)
    return folder, {"labels": [data.label_names[i] for i in probs.argmax(-1).tolist()],
                    "proba": [dict(zip(data.label_names, row)) for row in probs.tolist()]}


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Four exports made in this process and loaded in one fresh process: {case: (expected, loaded, folder)}."""
    root = tmp_path_factory.mktemp("exports")
    data = make_toy_classification()
    user_lm = write_model(root / "user_lm" / "mine", BUILD_MODEL_LM, {"d_model": 16})
    user_classifier = write_model(root / "user_classifier" / "mine", MASKLESS_CLASSIFIER)
    cases = {
        "gpt": exported_lm(root / "gpt", lm_run(root / "gpt")),
        "user_lm": exported_lm(root / "user_lm", lm_run(root / "user_lm", model_source="file",
                                                        model_path=str(user_lm))),
        "classifier": exported_classifier(root / "classifier", data),
        "user_classifier": exported_classifier(root / "user_classifier", data, model_source="file",
                                               model_path=str(user_classifier)),
    }
    for case in cases:  # nothing of the runs is left but the exports: no checkpoints, no user model files
        shutil.rmtree(root / case / "run")
        shutil.rmtree(root / case / "mine", ignore_errors=True)
    exports = {case: str(folder) for case, (folder, _) in cases.items()}
    elsewhere, out = tmp_path_factory.mktemp("elsewhere"), root / "loaded.json"
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_RUN,
                           json.dumps([exports, str(out), PROMPT, SEED, NEW_TOKENS, TEXTS])],
                          cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(out.read_text())
    return {case: (expected, loaded[case], Path(folder)) for case, (folder, expected) in cases.items()}


@pytest.mark.parametrize("case", ["gpt", "user_lm"])
def test_language_models_generate_the_same_text_after_loading_elsewhere(round_trip, case):
    expected, loaded, _ = round_trip[case]
    assert len(expected) > len(PROMPT) + 10
    assert loaded == expected


@pytest.mark.parametrize("case", ["classifier", "user_classifier"])
def test_classifiers_predict_the_same_after_loading_elsewhere(round_trip, case):
    expected, loaded, _ = round_trip[case]
    assert loaded["labels"] == expected["labels"]
    assert loaded["proba"] == expected["proba"]  # bit for bit: same weights, same code, same threads
    held_out_truth = [LABEL_NAMES[label] for label in toy_texts(12, seed=99)[1]]
    if case == "classifier":  # the template learns the toy task in 20 steps
        assert expected["labels"][:12] == held_out_truth


def test_export_folder_layout(round_trip):
    files = {case: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
             for case, (_, _, folder) in round_trip.items()}
    common = [".kit-export.json", "config.json", "model.safetensors", "tokenizer/tokenizer_meta.json"]
    assert files["gpt"] == common
    assert files["user_lm"] == sorted(common + ["user_model/config.json", "user_model/model.py",
                                                "user_model/source.json"])
    assert files["classifier"] == sorted(common + ["labels.json"])
    assert files["user_classifier"] == sorted(common + ["labels.json", "user_model/model.py", "user_model/source.json"])
    labels = json.loads((round_trip["classifier"][2] / "labels.json").read_text())
    assert labels == {"label_names": LABEL_NAMES, "pad_id": 0}
    assert "d_model" in (round_trip["user_lm"][2] / "user_model" / "config.json").read_text()


def test_every_exported_file_gets_the_mode_a_plain_write_gives(round_trip):
    umask = os.umask(0)
    os.umask(umask)
    for _, _, folder in round_trip.values():  # safetensors writes its weights 0600 by itself
        modes = {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
        assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_task_specific_methods_refuse_the_other_task(round_trip):
    lm = load_exported(round_trip["gpt"][2])
    with pytest.raises(ValueError, match=r"predict\(\) needs task='classification'; this model was trained for task='lm'"):
        lm.predict(["x"])
    classifier = load_exported(round_trip["classifier"][2])
    with pytest.raises(ValueError, match=r"generate\(\) needs task='lm'"):
        classifier.generate("x")


def test_a_classifier_export_without_labels_is_refused(tmp_path, round_trip):
    exported = load_exported(round_trip["classifier"][2])
    with pytest.raises(ValueError, match="exporting a classifier needs its label_names"):
        export_model(exported.model, exported.config, exported.tokenizer, tmp_path / "x")
    folder = shutil.copytree(round_trip["classifier"][2], tmp_path / "copy")
    (folder / "labels.json").unlink()
    with pytest.raises(FileNotFoundError, match="No labels.json in .*: a classifier's export names its classes there"):
        load_exported(folder)


def test_export_replaces_an_earlier_export_but_never_another_folder(tmp_path, round_trip):
    exported = load_exported(round_trip["gpt"][2])
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    (drive / "thesis.docx").write_text("precious")
    with pytest.raises(ExportError, match="not written by an export of this kit .* would delete thesis.docx"):
        export_model(exported.model, exported.config, exported.tokenizer, drive)
    assert [p.name for p in drive.iterdir()] == ["thesis.docx"]
    again = export_model(exported.model, exported.config, exported.tokenizer, tmp_path / "export")
    (again / "stale.txt").write_text("from an older export")
    export_model(exported.model, exported.config, exported.tokenizer, again)  # an earlier export: replaced whole
    assert sorted(p.name for p in again.iterdir()) == [".kit-export.json", "config.json", "model.safetensors",
                                                       "tokenizer"]


def test_a_hugging_face_model_folder_is_not_taken_for_an_earlier_export(tmp_path):
    """A folder of a Hugging Face model has model.safetensors and config.json too; its other files must survive."""
    hf = tmp_path / "my-hf-model"
    hf.mkdir()
    files = {"model.safetensors": b"\x00weights", "config.json": b'{"model_type": "gpt2"}',
             "README.md": b"# my model", "tokenizer.json": b"{}", "training_args.bin": b"\x80\x04args"}
    for name, data in files.items():
        (hf / name).write_bytes(data)
    tokenizer = CharTokenizer(list("abc"))
    with pytest.raises(ExportError) as e:
        export_model(nn.Linear(2, 2), WizardConfig(output_dir=str(tmp_path / "run")), tokenizer, hf)
    message = str(e.value)
    assert f"{hf} is not empty and was not written by an export of this kit (no .kit-export.json)" in message
    assert "would delete README.md, config.json, model.safetensors, tokenizer.json, training_args.bin" in message
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == files  # nothing touched, nothing added

    written = export_model(nn.Linear(2, 2), WizardConfig(output_dir=str(tmp_path / "run")), tokenizer,
                           tmp_path / "export")
    marker = json.loads((written / ".kit-export.json").read_text())
    assert marker["written_by"] == "colab-transformer-kit" and marker["kit_version"] == kit_version()


def test_an_export_onto_an_existing_file_is_refused_naming_it(tmp_path):
    """export --to NOTES.txt used to replace the user's file with an export folder (the file kept only as a hidden
    .NOTES.txt.replaced-PID); it is refused and the file is left as it was."""
    from utils.data.tokenizers import ByteTokenizer

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n", encoding="utf-8")
    with pytest.raises(ExportError, match=rf"{notes} is a file, not a folder: exporting there would replace it"):
        export_model(nn.Linear(2, 2), WizardConfig(output_dir=str(tmp_path / "run")), ByteTokenizer(), notes)
    assert notes.read_text(encoding="utf-8") == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_old_result_export_method_says_where_the_export_went():
    """TrainingResult.export(...) became utils.export.export_result(result, ...) (training no longer imports the
    export); a notebook cell written for the old name gets the new one in its error, not a bare AttributeError."""
    from utils.training.coordinator import TrainingResult

    with pytest.raises(AttributeError,
                       match=r"from utils.export import export_result; export_result\(result, \.\.\.\)"):
        TrainingResult.export(None, merged=True)

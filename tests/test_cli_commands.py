"""The command line after training: export, generate, predict and estimate on finished runs, the run
folder loaded back as a Predictor (utils.loading), and the console entry point.

One tiny language model is trained once through `python -m utils.training train` and one tiny
classifier through train(); each command runs in a subprocess as a user runs it. Bad input goes
through main() in this process (the same code, without paying for a new interpreter per row).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module

import pytest

from tests.conftest import REPO_ROOT, corpus_start
from tests.test_bad_input import snapshot
from tests.test_training import _write_labelled
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.export import load_exported
from utils.loading import LoadedRun, load_run
from utils.training import train
from utils.cli import estimate_and_report, main
from utils.training.estimate import BatchTooLargeError, estimate_config
from utils.precision import resolve_precision

TINY_LM = ["--set", "max_steps=3", "--set", "max_seq_len=32", "--set", "batch_size=4", "--set", "model_size=tiny",
           "--set", "log_every_n_steps=1"]
TEXTS = ["abc def gh", "ABC DEF GH", "hdg ab"]


def _kit(*args: str, argv0: str | None = None) -> subprocess.CompletedProcess:
    """`python -m utils.training ARGS`, or the console script's own code when argv0 is given."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if argv0:  # what pip's generated colab-kit script does: set argv[0], then sys.exit(main())
        code = f"import sys; sys.argv[0] = {argv0!r}; from utils.cli import main; sys.exit(main())"
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", "utils.training", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny language model trained by the `train` command and a tiny classifier trained by train()."""
    root = tmp_path_factory.mktemp("cli-commands")
    lm = root / "lm"
    proc = _kit("train", "--set", "dataset_source=file", "--set", f"dataset_path={corpus_start(root, 6_000)}",
                *TINY_LM, "--set", f"output_dir={lm}", "--sample-tokens", "10")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    classifier = train(WizardConfig(
        task="classification", model_template="classifier", model_size="tiny", dataset_source="file",
        dataset_path=str(_write_labelled(root, "csv")), text_column="review", label_column="sentiment",
        max_seq_len=24, batch_size=16, learning_rate=3e-3, warmup_ratio=0.0, max_steps=12, val_split=0.2,
        output_dir=str(root / "classifier")), device=DeviceInfo("cpu", "CPU"))
    return {"root": root, "lm": lm, "train_stdout": proc.stdout, "classifier": classifier,
            "cls": classifier.output_dir}


def test_train_command_says_what_to_do_next_and_its_run_loads_back(runs):
    lm = runs["lm"]
    assert f"\nNext: python -m utils.training generate {lm} ... or python -m utils.training export {lm}\n" \
        in runs["train_stdout"]
    last = load_run(lm, checkpoint="last")
    assert isinstance(last, LoadedRun) and last.checkpoint == lm / "checkpoints" / "last.ckpt"
    assert last.config.task == "lm" and last.config.max_steps == 3 and last.output_dir == lm
    best = load_run(lm)  # the one validation ran at step 3: best and last hold the same weights
    assert best.checkpoint.name.startswith("epoch00-step3-val") and best.checkpoint.suffix == ".ckpt"
    assert best.generate("def ", 30, seed=1) == last.generate("def ", 30, seed=1)


def test_a_loaded_classifier_run_predicts_as_the_training_result_did(runs):
    result, folder = runs["classifier"], runs["cls"]
    assert (folder / "labels.json").is_file()
    loaded = load_run(folder, checkpoint="last")  # last.ckpt is written when training ends: the result's weights
    assert loaded.label_names == result.label_names == ["calm", "loud"] and loaded.pad_id == result.pad_id
    assert loaded.predict_proba(TEXTS) == result.predict_proba(TEXTS)  # the same weights, the same code
    assert loaded.predict(TEXTS) == result.predict(TEXTS)


def test_export_command_writes_a_folder_that_loads_back_with_the_run_s_best_weights(runs):
    lm, target = runs["lm"], runs["root"] / "lm-export"
    before = snapshot(lm)
    proc = _kit("export", str(lm), "--to", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = load_run(lm)
    assert proc.stdout.splitlines() == [
        f"Exported {best.checkpoint} to {target}",
        f"Load it with utils.export.load_exported('{target}'), or run: python -m utils.training generate {target} ..."]
    assert sorted(p.name for p in target.iterdir()) == [".kit-export.json", "config.json", "model.safetensors",
                                                         "tokenizer"]
    exported = load_exported(target)
    assert exported.generate("class ", 40, seed=3) == best.generate("class ", 40, seed=3)
    assert snapshot(lm) == before


def test_generate_command_prints_the_prompt_and_the_sampled_text(runs):
    proc = _kit("generate", str(runs["lm"]), "--prompt", "def ", "--max-new-tokens", "25", "--seed", "0",
                "--temperature", "0.9", "--top-k", "10", "--checkpoint", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = load_run(runs["lm"], checkpoint="last").generate("def ", 25, temperature=0.9, top_k=10, seed=0)
    assert proc.stdout == expected + "\n"
    assert expected.startswith("def ") and len(expected) == len("def ") + 25  # char tokenizer: one char a token


def test_predict_command_prints_a_label_per_text_from_a_file(runs):
    texts = runs["root"] / "texts.txt"
    texts.write_text("\n".join([TEXTS[0], "", *TEXTS[1:]]) + "\n", encoding="utf-8")  # a blank line is skipped
    proc = _kit("predict", str(runs["cls"]), "--file", str(texts), "--checkpoint", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = runs["classifier"].predict(TEXTS)
    assert proc.stdout.splitlines() == [f"{label}\t{text}" for label, text in zip(labels, TEXTS)]


def test_predict_takes_texts_on_the_command_line_too(runs, capsys):
    assert main(["predict", str(runs["cls"]), "--text", TEXTS[0], "--text", TEXTS[1], "--checkpoint", "last"]) == 0
    labels = runs["classifier"].predict(TEXTS[:2])
    assert capsys.readouterr().out.splitlines() == [f"{labels[0]}\t{TEXTS[0]}", f"{labels[1]}\t{TEXTS[1]}"]


def test_a_classifier_export_predicts_as_its_run_does(runs, capsys):
    folder = load_run(runs["cls"]).export(runs["root"] / "cls-export")
    assert main(["predict", str(folder), "--text", TEXTS[0], "--text", TEXTS[1]]) == 0
    labels = load_run(runs["cls"]).predict(TEXTS[:2])
    assert capsys.readouterr().out.splitlines() == [f"{labels[0]}\t{TEXTS[0]}", f"{labels[1]}\t{TEXTS[1]}"]
    assert load_exported(folder).label_names == ["calm", "loud"]


def test_estimate_command_prints_the_estimate_and_writes_nothing_into_the_run(runs):
    before = snapshot(runs["lm"])
    proc = _kit("estimate", "--config", str(runs["lm"] / "config.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Precision", "Estimate", "Memory"]
    assert "(32-true, batch 4 x 1 accumulation, timed on CPU); 3 steps + 1 validation(s)" in lines[1]
    assert "at batch_size=4, fits in this machine's RAM" in lines[2]
    assert snapshot(runs["lm"]) == before


def test_estimate_refuses_a_batch_that_does_not_fit_with_train_s_own_message(runs, capsys):
    """The device's memory is injected (a DeviceInfo with total_memory_bytes); this machine's RAM would hold it."""
    config = WizardConfig.load(runs["lm"] / "config.json").replace(batch_size=64, gradient_accumulation_steps=2,
                                                                    output_dir=str(runs["root"] / "estimate"))
    memory = estimate_config(config, resolve_precision(False, "auto", DeviceInfo("cpu", "CPU"))).memory
    small = DeviceInfo("cpu", "Small CPU", None, int((memory.fixed_bytes + 10.5 * memory.per_sequence_bytes) / 0.9))
    with pytest.raises(BatchTooLargeError) as refused:
        estimate_and_report(config, device=small)
    with pytest.raises(BatchTooLargeError) as trained:
        train(config, device=small)
    assert str(refused.value) == str(trained.value)
    assert str(refused.value).startswith("batch_size=64 needs about ")
    assert str(refused.value).endswith("The largest batch that fits is 10: batch_size=8 with "
                                       "gradient_accumulation_steps=16 keeps the effective batch.")


def _no_run(w):
    return ["export", str(w["root"] / "nope")], (f"No folder at {w['root'] / 'nope'}: give a run folder (the "
                                                 "output_dir of a training run) or an export folder")


def _not_a_run(w):
    (w["root"] / "notes").mkdir(exist_ok=True)
    return ["generate", str(w["root"] / "notes")], (f"{w['root'] / 'notes'} is not a run folder of the kit (no "
                                                    "config.json): give the output_dir of a training run, or an "
                                                    "export folder (output_dir/export)")


def _no_checkpoint(w):
    folder = w["root"] / "untrained"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes((w["lm"] / "config.json").read_bytes())
    return ["export", str(folder)], (f"{folder} has no checkpoint in {folder / 'checkpoints'}: train it first, e.g. "
                                     f"`python -m utils.training --config {folder / 'config.json'}`")


def _texts_file_missing(w):
    return ["predict", str(w["cls"]), "--file", str(w["root"] / "missing.txt")], \
        f"No file at {w['root'] / 'missing.txt'} (--file): give a text file with one text per line"


def _predict_on_a_language_model(w):
    return ["predict", str(w["lm"]), "--text", "hello"], \
        (f"predict needs a model trained with task='classification', but {w['lm']} holds one trained with "
         f"task='lm'; use `python -m utils.training generate {w['lm']}` instead")


def _generate_on_a_classifier(w):
    return ["generate", str(w["cls"])], \
        (f"generate needs a model trained with task='lm', but {w['cls']} holds one trained with "
         f"task='classification'; use `python -m utils.training predict {w['cls']}` instead")


def _export_over_a_run(w):
    return ["export", str(w["lm"]), "--to", str(w["cls"])], f"{w['cls']} is not empty and was not written by an export"


def _predict_without_texts(w):
    return ["predict", str(w["cls"])], ("error: one of the arguments --text --file is required; see "
                                        "python -m utils.training predict --help")


@pytest.mark.parametrize("bad_input", [_no_run, _not_a_run, _no_checkpoint, _texts_file_missing,
                                       _predict_on_a_language_model, _generate_on_a_classifier, _export_over_a_run,
                                       _predict_without_texts], ids=lambda row: row.__name__.strip("_"))
def test_bad_input_is_one_line_with_exit_2_and_the_runs_untouched(runs, capsys, bad_input):
    before = {name: snapshot(runs[name]) for name in ("lm", "cls")}
    args, expected = bad_input(runs)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors leave through sys.exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err, err
    assert {name: snapshot(runs[name]) for name in ("lm", "cls")} == before


def test_console_entry_point_names_the_command_line_s_main():
    """The venv's editable install comes from another checkout, so the script itself is not on PATH here:
    its entry in pyproject.toml is resolved, and its code run as pip's generated script runs it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the kit supports 3.10
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    module, function = scripts["colab-kit"].split(":")
    assert getattr(import_module(module), function) is main
    proc = _kit("--help", argv0="colab-kit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: colab-kit [train] [--config FILE] [--set KEY=VALUE ...]")
    assert "\n  colab-kit generate RUN_DIR_OR_EXPORT " in proc.stdout
    proc = _kit("export", "/nonexistent/run", argv0="colab-kit")
    assert (proc.returncode, proc.stderr) == (2, "error: No folder at /nonexistent/run: give a run folder (the "
                                                 "output_dir of a training run) or an export folder\n")

"""train.ipynb's cells, run in order in this process: a run saves, exports, and a rerun resumes.

nbval checks that the notebooks run; this checks what they leave behind. The "disconnect" is a
first Run all that stops after 3 steps and a second one with max_steps=6 in the same workspace.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest
import torch

from tests.test_adapters import llama_folder  # noqa: F401  (a fixture)

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = "model_size=tiny max_seq_len=32 batch_size=8 val_split=0.02 log_every_n_steps=1"


def run_all(monkeypatch, workspace: Path, overrides: str, form: dict | None = None) -> dict:
    """Every code cell of train.ipynb in order, as Run all does, in one namespace; form: form fields set to other
    values, as a user sets them in Colab."""
    monkeypatch.setenv("KIT_WORKSPACE", str(workspace))
    monkeypatch.setenv("KIT_NOTEBOOK_OVERRIDES", overrides)
    monkeypatch.chdir(REPO / "notebooks")
    nb = nbformat.read(REPO / "notebooks" / "train.ipynb", as_version=4)
    for name, value in (form or {}).items():
        fields = [(cell, re.search(rf"^{name} = .*?(  #@param.*)$", cell.source, re.M)) for cell in nb.cells]
        ((cell, field),) = [(cell, field) for cell, field in fields if field]  # one form field of that name
        cell.source = cell.source.replace(field[0], f"{name} = {value!r}{field[1]}")
    namespace = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add OpenMP overhead
    try:
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, cell.source.splitlines()[0], "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    return namespace


@pytest.mark.slow
def test_run_all_trains_exports_and_a_second_run_all_resumes(tmp_path, monkeypatch, capsys):
    first = run_all(monkeypatch, tmp_path, f"{TINY} max_steps=3")["result"]
    run_dir = tmp_path / "runs" / "default"
    assert first.output_dir == run_dir and first.global_step == 3
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "runs" / "wizard_config.json").is_file(), "the Train cell saves the wizard's choices"
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [
        ".kit-export.json", "config.json", "model.safetensors", "tokenizer"]
    out = capsys.readouterr().out
    assert "Precision: 32-true - fp32: no CUDA GPU" in out
    assert "characters tokenizer with 103 ids" in out and "char tokenizer" not in out  # the wizard's word
    assert f"Loaded GPT from {run_dir / 'export'}:" in out
    assert f"Exported to {run_dir / 'export'}: config.json, model.safetensors, tokenizer\n" in out  # no hidden marker

    ns = run_all(monkeypatch, tmp_path, f"{TINY} max_steps=6")
    second = ns["result"]
    assert second.resumed_from == run_dir / "checkpoints" / "last.ckpt"
    assert (second.steps_run, second.global_step) == (3, 6)
    assert [step for step, _ in second.train_history] == [1, 2, 3, 4, 5, 6]  # the whole run's curve
    out = capsys.readouterr().out
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    assert "No TEST_FILE given: nothing evaluated." in out and "1 run under " in out
    # The Results figure spans both stretches; kept as an artifact for a person to look at.
    figure = run_dir / "training.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "notebook-training.png").write_bytes(figure.read_bytes())
    # The reloaded export samples exactly what the trained model samples.
    assert ns["loaded"].generate("The ", max_new_tokens=50, seed=0) == second.generate("The ", 50, seed=0)


@pytest.mark.slow
def test_run_all_after_a_changed_setting_starts_anew_and_keeps_the_old_run(tmp_path, monkeypatch, capsys):
    run_all(monkeypatch, tmp_path, f"{TINY} max_steps=3")
    run_dir = tmp_path / "runs" / "default"
    old_ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    old_export = (run_dir / "export" / "model.safetensors").read_bytes()
    capsys.readouterr()
    changed = TINY.replace("max_seq_len=32", "max_seq_len=16")  # a setting the old run cannot continue with
    second = run_all(monkeypatch, tmp_path, f"{changed} max_steps=2")["result"]
    assert second.resumed_from is None and second.global_step == 2
    (archived,) = (run_dir / "archive").iterdir()
    assert (archived / "checkpoints" / "last.ckpt").read_bytes() == old_ckpt
    assert (archived / "export" / "model.safetensors").read_bytes() == old_export
    out = capsys.readouterr().out
    assert "Sequence length: 32 (the old run) vs 16 (now)" in out and f"moved, untouched, to {archived}" in out


@pytest.mark.slow
def test_run_all_with_a_classifier_reports_accuracy_and_labels(tmp_path, monkeypatch, capsys):
    csv_path = tmp_path / "reviews.csv"
    rows = [("abc fed cab" if i % 2 else "ABC FED CAB", "calm" if i % 2 else "loud") for i in range(80)]
    csv_path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    overrides = (f"task=classification model_template=classifier dataset_source=file dataset_path={csv_path} "
                 "max_seq_len=16 batch_size=8 val_split=0.25 max_epochs=3 log_every_n_steps=1")
    ns = run_all(monkeypatch, tmp_path, overrides)
    result, loaded = ns["result"], ns["loaded"]
    assert result.label_names == ["calm", "loud"] and result.val_accuracy == 1.0
    out = capsys.readouterr().out
    assert "val accuracy:     1.0000" in out and "'The ' -> " in out
    assert "Note: dropped characters the training text never had: 'Th'" in out  # the default PROMPT
    assert sorted(p.name for p in (result.output_dir / "export").iterdir()) == \
        [".kit-export.json", "config.json", "labels.json", "model.safetensors", "tokenizer"]
    assert loaded.predict(["abc", "CAB"]) == result.predict(["abc", "CAB"]) == ["calm", "loud"]


@pytest.mark.slow
def test_the_export_cell_refuses_gguf_for_the_kit_gpt_in_one_line_and_run_all_goes_on(tmp_path, monkeypatch, capsys):
    run_all(monkeypatch, tmp_path, f"{TINY} max_steps=2", form={"EXPORT_FORMAT": "GGUF"})
    run_dir = tmp_path / "runs" / "default"
    captured = capsys.readouterr()
    refusal = [line for line in captured.out.splitlines() if line.startswith("Not exported: ")]
    assert refusal == ["Not exported: GGUF export needs a fine-tuned pretrained Llama, SmolLM2, Mistral, Qwen2, Qwen3 "
                       "or GPT-2 (model_source='pretrained'); this run trained the kit's 'gpt' template on the 'char' "
                       "tokenizer, which llama.cpp has no architecture for"]
    assert f"No export folder {run_dir / 'export'} to load: choose EXPORT_FORMAT 'safetensors' above" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert not (run_dir / "gguf").exists() and not (run_dir / "export").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("peft") is None,
                    reason="gguf and peft are not installed (requirements-test.txt)")
def test_the_export_cell_writes_a_checked_gguf_of_a_lora_llama_that_answers_like_the_run(tmp_path, monkeypatch, capsys,
                                                                                          llama_folder):
    from tests.conftest import corpus_start
    from tests.test_gguf_export import _chat_ids, _greedy_answer, _read_back, allow_the_tiny_tokenizer

    allow_the_tiny_tokenizer(monkeypatch)  # the tiny tokenizer's pre-tokenizer counts as GPT-2's (see that module)
    overrides = (f"model_source=pretrained pretrained_model={llama_folder} finetune_method=lora lora_rank=4 "
                 f"dataset_source=file dataset_path={corpus_start(tmp_path / 'data', 8_000)} max_seq_len=32 "
                 "batch_size=4 max_steps=3 val_split=0.05 log_every_n_steps=1 learning_rate=2e-2")
    ns = run_all(monkeypatch, tmp_path, overrides, form={"EXPORT_FORMAT": "GGUF", "GGUF_QUANT": "f16",
                                                         "MAX_NEW_TOKENS": 8})
    gguf_dir = tmp_path / "runs" / "default" / "gguf"
    out = capsys.readouterr().out
    assert f"GGUF: {gguf_dir / 'model-f16.gguf'} (f16, " in out and "greedy picks agree on 24/24 tokens;" in out
    assert f"Ollama:    cd {gguf_dir} && ollama create llama" in out and \
        f"llama.cpp: llama-cli -m {gguf_dir / 'model-f16.gguf'} -cnv" in out
    assert sorted(p.name for p in gguf_dir.iterdir()) == ["Modelfile", "model-f16.gguf"]
    assert "No export folder" in out and not (tmp_path / "runs" / "default" / "export").exists()
    # Read back independently: the file answers a chat prompt as the run's model does.
    result, (model, _) = ns["result"], _read_back(gguf_dir / "model-f16.gguf")
    ids = _chat_ids(result.tokenizer.hf, "What is the capital of France?")
    assert _greedy_answer(model, ids) == _greedy_answer(result.model.float().eval(), ids)


# Lines a default Run all may print on stderr, each with what the user does about it. Anything else on
# stderr is noise (Colab shows stderr in red) and fails the test below.
ALLOWED_STDERR: dict[str, str] = {}


def stderr_lines(nb: nbformat.NotebookNode) -> list[str]:
    return [line for cell in nb.cells for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" and out.get("name") == "stderr"
            for line in out["text"].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> list[nbformat.NotebookNode]:
    """train.ipynb executed by a kernel as Run all does, twice in one workspace: a first run and a rerun that
    resumes (loads the checkpoint) and trains on."""
    from nbclient import NotebookClient

    workspace = tmp_path_factory.mktemp("workspace")
    runs = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("KIT_WORKSPACE", str(workspace))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        for steps in (3, 6):
            monkeypatch.setenv("KIT_NOTEBOOK_OVERRIDES", f"{TINY} max_steps={steps}")
            nb = nbformat.read(REPO / "notebooks" / "train.ipynb", as_version=4)
            NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
            runs.append(nb)
    return runs


@pytest.mark.slow
def test_a_default_run_all_and_its_rerun_print_nothing_on_stderr_a_user_cannot_act_on(executed):
    noise = [f"{run}: {line}" for run, nb in zip(("first", "resumed"), executed) for line in stderr_lines(nb)
             if not any(re.search(pattern, line) for pattern in ALLOWED_STDERR)]
    assert noise == []


def cell_titled(nb: nbformat.NotebookNode, title: str) -> nbformat.NotebookNode:
    return next(cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith(f"#@title {title}"))


@pytest.mark.slow
def test_the_results_cell_shows_the_curves_above_the_samples(executed):
    outputs = cell_titled(executed[0], "Curves, throughput and samples").outputs
    kinds = ["plot" if "image/png" in out.get("data", {}) else "samples" if "--- sample" in out.get("text", "")
             else "other" for out in outputs]
    assert "plot" in kinds and "samples" in kinds and kinds.index("plot") < kinds.index("samples"), kinds


@pytest.mark.slow
def test_the_train_cell_ends_with_the_next_step(executed):
    text = "".join(out.get("text", "") for out in cell_titled(executed[0], "Train").outputs
                   if out.get("name") == "stdout")
    assert text.strip().splitlines()[-1].startswith("Next: the Results cell plots the loss curves and samples text")


@pytest.mark.slow
def test_a_rerun_with_nothing_left_to_train_says_what_to_change_in_the_wizard(tmp_path, monkeypatch, capsys):
    run_all(monkeypatch, tmp_path, f"{TINY} max_steps=3")
    capsys.readouterr()
    result = run_all(monkeypatch, tmp_path, f"{TINY} max_steps=3")["result"]
    assert result.steps_run == 0
    out = capsys.readouterr().out
    assert (f"Nothing to train: the run in {tmp_path / 'runs' / 'default'} already reached Max steps = 3. To train it "
            "further, raise Max steps in the wizard; to start a new run instead, choose a new Output folder there."
            ) in out
    assert "resume=False" not in out and "max_steps" not in out.split("Nothing to train")[1]

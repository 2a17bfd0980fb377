"""End-to-end: tiny models train on the CPU through the one core, save, resume and refuse mismatches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from tests.conftest import REPO_ROOT
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.errors import KitError
from utils.training import TrainingResult, train
from utils.cli import BUG_NOTE, main as cli_main
from utils.precision import resolve_precision
from utils.training.builder import build_callbacks, build_trainer
from utils.models.build import build_model
from utils.training.callbacks.recorder import RunRecorder
from utils.training.callbacks.last_checkpoint import LastCheckpoint
from utils.run_folder.checkpoints import IncompatibleCheckpointError
from utils.training.module import param_groups, warmup_cosine
from utils.export import export_result

CPU = DeviceInfo("cpu", "CPU")


def _load_ckpt(path):
    # Our own Lightning checkpoint, written by this test run: it holds optimizer/loop state, not just tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


def test_tiny_run_learns_and_saves_everything(tiny_config):
    config = tiny_config.replace(max_steps=40)
    result = train(config, device=CPU)
    first = sum(loss for _, loss in result.train_history[:5]) / 5
    last = sum(loss for _, loss in result.train_history[-5:]) / 5
    assert last < first - 0.5, (first, last)  # char-level loss starts near ln(92) = 4.5
    assert result.global_step == result.steps_run == 40
    assert result.precision == "32-true" and "no CUDA GPU" in result.precision_reason
    out = result.output_dir
    assert result.last_checkpoint == out / "checkpoints" / "last.ckpt" and result.last_checkpoint.exists()
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert WizardConfig.load(out / "config.json") == config
    assert json.loads((out / "tokenizer" / "tokenizer_meta.json").read_text())["kind"] == "char"
    assert result.val_loss is not None and result.val_history[-1] == (40, result.val_loss)
    assert result.tokens_per_sec > 0
    assert (out / "logs" / "version_0" / "metrics.csv").exists()
    assert _load_ckpt(result.last_checkpoint)["global_step"] == 40


def test_second_run_resumes_from_the_saved_step(tiny_config):
    config = tiny_config.replace(max_epochs=3)
    first = train(config.replace(max_steps=6), device=CPU)
    second = train(config.replace(max_steps=10), device=CPU)
    assert second.resumed_from == first.last_checkpoint
    assert (second.global_step, second.steps_run) == (10, 4)
    ckpt = _load_ckpt(second.last_checkpoint)
    assert ckpt["global_step"] == 10
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 10  # LR schedule continued, not restarted
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {10}  # optimizer moments carried over


def test_a_finished_run_says_there_is_nothing_to_train(tiny_config, capsys):
    first = train(tiny_config.replace(max_steps=3), device=CPU)
    again = train(tiny_config.replace(max_steps=3), device=CPU)
    assert (again.global_step, again.steps_run) == (3, 0)
    assert f"Nothing to train: {first.last_checkpoint} already reached max_epochs=1 or max_steps=3" \
        in capsys.readouterr().out
    raised = train(tiny_config.replace(max_steps=5), device=CPU)  # the epoch is not over: raising max_steps trains
    assert (raised.global_step, raised.steps_run) == (5, 2)


def test_resume_restores_the_grad_scaler_state(tiny_config):
    config = tiny_config.replace(precision="16-mixed", max_steps=3, max_epochs=3)
    first = train(config, device=CPU)
    assert _load_ckpt(first.last_checkpoint)["MixedPrecision"]["scale"] == 65536.0
    second = train(config.replace(max_steps=5), device=CPU)
    assert (second.global_step, second.steps_run, second.precision) == (5, 2, "16-mixed")


def test_same_seed_gives_the_same_first_losses(tmp_path, tiny_config):
    runs = [train(tiny_config.replace(max_steps=3, seed=seed, output_dir=str(tmp_path / f"r{i}")), device=CPU)
            for i, seed in enumerate([7, 7, 8])]
    losses = [[round(loss, 6) for _, loss in r.train_history] for r in runs]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_checkpoint_of_another_config_is_refused_and_left_untouched(tiny_config):
    first = train(tiny_config.replace(max_steps=2), device=CPU)
    ckpt_bytes = first.last_checkpoint.read_bytes()
    saved_config = (first.output_dir / "config.json").read_text()
    with pytest.raises(IncompatibleCheckpointError) as err:
        train(tiny_config.replace(max_steps=4, model_size="small", max_seq_len=64), device=CPU)
    msg = str(err.value)
    assert "model_size: 'tiny' (checkpoint) vs 'small' (now)" in msg
    assert "max_seq_len: 32 (checkpoint) vs 64 (now)" in msg
    assert "run again with --set resume=false" in msg and "nothing in" in msg
    assert first.last_checkpoint.read_bytes() == ckpt_bytes
    assert (first.output_dir / "config.json").read_text() == saved_config


def test_start_fresh_moves_old_checkpoints_aside(tiny_config):
    first = train(tiny_config.replace(max_steps=2), device=CPU)
    old = first.last_checkpoint.read_bytes()
    second = train(tiny_config.replace(max_steps=3, resume=False), device=CPU)
    assert second.resumed_from is None and second.global_step == 3
    archived = list(first.output_dir.glob("archive/*/checkpoints/last.ckpt"))
    assert len(archived) == 1 and archived[0].read_bytes() == old
    kept = archived[0].parents[1]  # the whole old run moves together: its config, tokenizer and logs too
    assert {p.name for p in kept.iterdir()} >= {"config.json", "tokenizer", "checkpoints", "logs"}


def test_config_fields_reach_the_trainer(tiny_config):
    config = tiny_config.replace(gradient_accumulation_steps=4, gradient_clip_val=0.5, max_epochs=3, max_steps=None,
                                 early_stopping_patience=2, save_top_k=3, checkpoint_every_n_epochs=2,
                                 val_check_interval=0.5, log_every_n_steps=7)
    decision = resolve_precision(config.use_mixed_precision, config.precision, CPU)
    callbacks = build_callbacks(config, decision, RunRecorder(lambda b: 0, flush_every=1))
    trainer = build_trainer(config, decision, callbacks, loggers=[])
    assert (trainer.accumulate_grad_batches, trainer.gradient_clip_val, trainer.max_epochs, trainer.max_steps) == (4, 0.5, 3, -1)
    assert (trainer.val_check_interval, trainer.log_every_n_steps) == (0.5, 7)
    stop = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(stop) == 1 and stop[0].patience == 2 and stop[0].monitor == "val/loss"
    ckpt = trainer.checkpoint_callback  # best by validation loss; last.ckpt is LastCheckpoint's, on its own schedule
    assert isinstance(ckpt, ModelCheckpoint) and (ckpt.save_top_k, ckpt._every_n_epochs, ckpt.save_last) == (3, 2, False)
    last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
    assert len(last) == 1 and last[0].every_seconds == 300 and last[0].path.name == "last.ckpt"
    no_stop = build_trainer(config.replace(early_stopping_patience=0), decision,
                            build_callbacks(config.replace(early_stopping_patience=0), decision, RunRecorder(len, flush_every=1)), [])
    assert not any(isinstance(c, EarlyStopping) for c in no_stop.callbacks)


def test_no_weight_decay_on_norms_biases_and_embeddings(tiny_config):
    model = build_model(tiny_config, vocab_size=50)
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in keep["params"]}
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert all(n.endswith("weight") and ("qkv" in n or "proj" in n or "fc" in n) for n in decayed)
    assert "wte.weight" in kept and "wpe.weight" in kept  # embeddings (and the tied lm_head)
    assert any("ln_1" in n for n in kept) and any(n.endswith("bias") for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))  # tied weight counted once


def test_warmup_then_cosine():
    f = warmup_cosine(warmup_steps=10, total_steps=110)
    assert [round(f(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def _cli(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "utils.training", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_cli_bad_value_is_one_line_naming_field_and_fix(tmp_path):
    proc = _cli(["--set", "batch_size=0"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: Invalid WizardConfig: - Batch size (batch_size) must be >= 1, not 0"


def test_cli_missing_dataset_file_names_the_path(tmp_path):
    proc = _cli(["--set", "dataset_source=file", "--set", f"dataset_path={tmp_path}/nope.txt",
                 "--set", f"output_dir={tmp_path}/out"], tmp_path)
    assert proc.returncode == 2
    assert f"error: Dataset file not found: {tmp_path}/nope.txt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_kit_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert cli_main(["--config", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err == f"error: No config file at {tmp_path}/nope.json\n"
    data = tmp_path / "data.txt"
    data.write_text("abcdefgh" * 4, encoding="utf-8")  # too little text for a train/val split: a DataError
    assert cli_main(["--set", "dataset_source=file", "--set", f"dataset_path={data}",
                     "--set", f"output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The dataset has 32 tokens: only 0 sequences of max_seq_len=128") and err.count("\n") == 1


@pytest.mark.parametrize("bug", [RuntimeError("boom"), ValueError("boom")])
def test_cli_unexpected_error_shows_its_traceback_and_says_it_is_a_bug(tmp_path, monkeypatch, capsys, bug):
    import utils.training

    def broken_train(config):
        raise bug

    monkeypatch.setattr(utils.training, "train", broken_train)  # stands for a bug anywhere in training
    assert cli_main(["--set", f"output_dir={tmp_path}/out"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and "in broken_train" in "\n".join(err)
    assert err[-2:] == [f"{type(bug).__name__}: boom", BUG_NOTE]
    assert BUG_NOTE == "This looks like a bug in the kit; please report it with the traceback above."


def test_summary_prints_val_accuracy_once_for_a_classifier_only(tmp_path):
    def summary(task, val_accuracy):
        return TrainingResult(config=WizardConfig(task=task), output_dir=tmp_path, best_checkpoint=None,
                              last_checkpoint=None, train_loss=0.5, val_loss=0.25, global_step=4, steps_run=4,
                              tokens_per_sec=100.0, precision="32-true", precision_reason="fp32: test",
                              resumed_from=None, val_accuracy=val_accuracy).summary()

    assert summary("classification", 0.875).count("val accuracy") == 1
    assert "val accuracy:     0.8750" in summary("classification", 0.875)
    assert "val accuracy:     n/a" in summary("classification", None)  # no validation ran yet
    assert "val accuracy" not in summary("lm", None)
    assert "val loss:         0.2500" in summary("lm", None)


@pytest.mark.slow
def test_cli_default_path_trains_and_prints_results(tmp_path):
    """`python -m utils.training` with no arguments: the README's main job, as a new user runs it."""
    proc = _cli([], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Precision: 32-true - fp32: no CUDA GPU" in out
    assert f"last checkpoint:  {tmp_path}/runs/default/checkpoints/last.ckpt" in out
    assert (tmp_path / "runs/default/checkpoints/last.ckpt").exists()
    assert "\nSample:\n" in out and len(out.split("\nSample:\n")[1]) >= 300
    val = float(out.split("val loss:")[1].split()[0])
    assert val < 2.6  # from ln(103) = 4.6 at the start


def _write_labelled(tmp_path, kind: str, n: int = 240):
    """Separable reviews: the class shows in every character (lower case = calm, upper case = loud)."""
    import csv
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = ["calm", "loud"][i % 2]
        letters = "abcdefgh" if label == "calm" else "ABCDEFGH"
        rows.append(("".join(rng.choice(letters + " ") for _ in range(rng.randint(4, 20))).strip() or letters[0], label))
    path = tmp_path / f"reviews.{kind}"
    if kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("review", "sentiment"), *rows])
    else:
        path.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind, tokenizer", [("csv", "char"), ("jsonl", "char"), ("csv", "bpe"), ("jsonl", "byte")])
def test_classifier_trains_from_labelled_files(tmp_path, kind, tokenizer):
    path = _write_labelled(tmp_path, kind)
    config = WizardConfig(task="classification", model_template="classifier", dataset_source="file",
                          dataset_path=str(path), text_column="review", label_column="sentiment",
                          tokenizer_strategy=tokenizer, vocab_size=300, max_seq_len=24, batch_size=16,
                          learning_rate=3e-3, warmup_ratio=0.0, max_epochs=4, val_split=0.2,
                          output_dir=str(tmp_path / "run"))
    result = train(config, device=CPU)
    assert result.label_names == ["calm", "loud"]
    assert result.val_accuracy is not None and result.val_accuracy >= 0.9, result.val_accuracy
    assert result.predict(["abc dead", "FACE BAD"]) == ["calm", "loud"]
    assert result.tokenizer.kind == tokenizer


def test_classifier_trains_from_a_locally_built_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = _write_labelled(tmp_path, "jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    features = datasets.Features({"review": datasets.Value("string"),
                                  "sentiment": datasets.ClassLabel(names=["calm", "loud"])})
    ds = datasets.Dataset.from_dict({"review": [r["review"] for r in rows],
                                     "sentiment": [r["sentiment"] for r in rows]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    config = WizardConfig(task="classification", model_template="classifier", dataset_source="huggingface",
                          dataset_name=str(tmp_path / "hf"), text_column="review", label_column="sentiment",
                          max_seq_len=24, batch_size=16, learning_rate=3e-3, warmup_ratio=0.0, max_epochs=4,
                          val_split=0.2, output_dir=str(tmp_path / "run"))
    result = train(config, device=CPU)
    assert result.label_names == ["calm", "loud"]
    assert result.val_accuracy >= 0.9


def test_optimizer_fields_reach_adamw_and_the_schedule(tiny_config):
    config = tiny_config.replace(learning_rate=2e-3, weight_decay=0.05, warmup_ratio=0.5, max_steps=4, max_epochs=3)
    result = train(config, device=CPU)
    ckpt = _load_ckpt(result.last_checkpoint)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(g["initial_lr"] == 2e-3 for g in groups)
    # 4 steps, warmup_ratio 0.5: two warmup steps (lr x 0.5, x 1.0), then cosine down to x 0.1 at step 4.
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(2e-3 * 0.1)


def test_model_fields_reach_the_model(tiny_config):
    small = build_model(tiny_config.replace(model_size="small", dropout=0.25, max_seq_len=48), vocab_size=50)
    assert small.wpe.num_embeddings == 48 and len(small.blocks) == 6 and small.wte.embedding_dim == 384
    assert {m.p for m in small.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    assert small.blocks[0].attn.dropout == 0.25


def test_a_model_passed_in_is_checked_before_training_and_cannot_be_exported(tiny_config):
    from tests.conftest import TinyLM
    from utils.models.user_models import UserModelError

    class NoBackprop(torch.nn.Module):  # logits that do not depend on any parameter
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(128, 4)

        def forward(self, idx):
            return torch.zeros(*idx.shape, 128, requires_grad=True)

    with pytest.raises(UserModelError, match="the loss does not reach any parameter"):
        train(tiny_config.replace(max_steps=1), model=NoBackprop(), device=CPU)
    assert not list((Path(tiny_config.output_dir) / "checkpoints").glob("*.ckpt"))  # refused before training
    result = train(tiny_config.replace(max_steps=1), model=TinyLM(128), device=CPU)  # 128 scores >= 92 ids: fine
    with pytest.raises(ValueError, match=r"TinyLM was passed to train\(model=\.\.\.\), so an export folder could not"):
        export_result(result)


@pytest.mark.parametrize("broken", ["missing", "no text"])
def test_start_fresh_checks_the_new_data_before_moving_the_old_run(tiny_config, tmp_path, broken):
    """resume=False with a data file that is missing or holds no text used to move the old run to archive/ first."""
    first = train(tiny_config.replace(max_steps=2), device=CPU)
    before = {str(p.relative_to(first.output_dir)): p.read_bytes() for p in sorted(first.output_dir.rglob("*"))
              if p.is_file() and p.name != ".run.lock" and "data_cache" not in p.parts}
    data = tmp_path / "new.txt"
    if broken == "no text":
        data.write_text("\n\n", encoding="utf-8")
    with pytest.raises(KitError):
        train(tiny_config.replace(max_steps=3, resume=False, dataset_path=str(data)), device=CPU)
    after = {str(p.relative_to(first.output_dir)): p.read_bytes() for p in sorted(first.output_dir.rglob("*"))
             if p.is_file() and p.name != ".run.lock" and "data_cache" not in p.parts}
    assert after == before and not (first.output_dir / "archive").exists()

"""TrainingCoordinator: one call from a WizardConfig to a trained model, its checkpoints and metrics."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerStatus
from torch import nn

from utils.config import CONFIG_FILENAME, WizardConfig
from utils.data import prepare_data
from utils.data.tokenizers import load_tokenizer, tokenizer_fingerprint
from utils.env import DeviceInfo, detect_device
from utils.export import ExportError, export_model
from utils.files import atomic_folder, remove_temp_files
from utils.inference import Predictor, classify_texts, sample_text  # sample_text, classify_texts: see __all__
from utils.training.amp_utils import PrecisionDecision, resolve_precision
from utils.training.builder import (build_callbacks, build_dataloaders, build_loggers, build_model, build_module,
                                    build_task, build_trainer)
from utils.training.callbacks import RunRecorder
from utils.training.checkpoint_io import TrainingStopped
from utils.training.checkpoints import (LOGS_DIRNAME, ON_CHANGE, TOKENIZER_DIRNAME, handle_changed_run,
                                        last_checkpoint, plan_resume, remove_checkpoints_after,
                                        resume_problems)
from utils.training.history import read_history
from utils.training.run_lock import RunLock
from utils.user_models import check_embedding_fits, check_model, keep_model_copy, resolve_user_model_files
from utils.wandb_helpers import finish_wandb_on_exit


@dataclass
class TrainingResult(Predictor):
    """What a run produced; generate() / predict() / predict_proba() from utils.inference, export() to a folder."""

    config: WizardConfig  # the config the run used
    output_dir: Path
    best_checkpoint: Optional[Path]  # lowest validation loss
    last_checkpoint: Optional[Path]  # resume point
    train_loss: Optional[float]  # last logged training loss
    val_loss: Optional[float]  # last validation loss
    global_step: int  # optimizer steps in total, resumed runs included
    steps_run: int  # optimizer steps taken by this call
    tokens_per_sec: float  # training throughput of this call, validation excluded
    precision: str  # Lightning precision in force
    precision_reason: str
    resumed_from: Optional[Path]
    train_history: list = field(default_factory=list, repr=False)  # (step, loss)
    val_history: list = field(default_factory=list, repr=False)  # (step, loss)
    model: Optional[nn.Module] = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    val_accuracy: Optional[float] = None  # classification: last validation accuracy
    label_names: list = field(default_factory=list)  # classification: class names, index = label id
    pad_id: int = 0  # classification: the id that pads sequences
    model_passed_in: bool = False  # trained through train(model=...): the config cannot rebuild it

    def summary(self) -> str:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines = [
            f"precision:        {self.precision} - {self.precision_reason}",
            f"steps:            {self.steps_run} this run, {self.global_step} in total"
            + (f" (resumed from {self.resumed_from})" if self.resumed_from else ""),
            f"train loss:       {fmt(self.train_loss)}",
            f"val loss:         {fmt(self.val_loss)}",
            *([f"val accuracy:     {fmt(self.val_accuracy)}"] if self.config.task == "classification" else []),
            f"throughput:       {self.tokens_per_sec:,.0f} tokens/s",
            f"best checkpoint:  {self.best_checkpoint or 'none saved'}",
            f"last checkpoint:  {self.last_checkpoint or 'none saved'}",
        ]
        return "\n".join(lines)

    def export(self, folder: Optional[str | Path] = None) -> Path:
        """Write weights (safetensors), config, tokenizer, class names and user model code to folder
        (default: output_dir/export); utils.export.load_exported reads it back anywhere."""
        if self.model_passed_in:
            raise ExportError(
                f"This {type(self.model).__name__} was passed to train(model=...), so an export folder could not "
                "rebuild it. Put its code in a model.py with build_model(config) or a Model class and train with "
                "model_source='file' (the export then carries the code), or save result.model.state_dict() yourself.")
        return export_model(self.model, self.config, self.tokenizer, folder, self.label_names, self.pad_id)


class TrainingCoordinator:
    """Trains a model from a WizardConfig through the one Lightning engine.

    `device` is detected when not given; tests pass a DeviceInfo to stand for a T4 or an A100.
    """

    def __init__(self, config: Optional[WizardConfig] = None, device: Optional[DeviceInfo] = None):
        self.config = (config or WizardConfig()).validate()
        self.device = device or detect_device()

    def resolve_precision(self, use_amp: Optional[bool] = None) -> PrecisionDecision:
        use_mixed = self.config.use_mixed_precision if use_amp is None else use_amp
        return resolve_precision(use_mixed, self.config.precision, self.device)

    def train(self, model: Optional[nn.Module] = None, use_amp: Optional[bool] = None,
              extra_callbacks: Optional[list[pl.Callback]] = None, on_change: str = "refuse") -> TrainingResult:
        """Train `model` (or the config's template) and return where everything went.

        use_amp: None follows config.use_mixed_precision; True/False overrides it for this call.
        on_change: when output_dir holds a run this config cannot continue, "refuse" (the command
        line) raises IncompatibleCheckpointError; "start_new" (the notebook) moves it to archive/.
        """
        config = self.config
        if use_amp is not None and use_amp != config.use_mixed_precision:
            config = config.replace(use_mixed_precision=use_amp,
                                    precision=config.precision if use_amp else "auto")
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change={on_change!r}; choose one of {', '.join(map(repr, ON_CHANGE))}")
        decision = resolve_precision(config.use_mixed_precision, config.precision, self.device)
        print(f"Precision: {decision.precision} - {decision.reason}")
        out = Path(config.output_dir)
        with RunLock(out):
            removed = remove_temp_files(out)
            if removed:
                print(f"Removed {len(removed)} temp file(s) left by an interrupted write in {out}.")
            return self._train_locked(config, decision, model, extra_callbacks, on_change)

    def _train_locked(self, config, decision, model, extra_callbacks, on_change) -> TrainingResult:
        out = Path(config.output_dir)
        resume = plan_resume(config, on_change)  # before the slow steps: a refused checkpoint fails fast

        pl.seed_everything(config.seed, workers=True, verbose=False)
        data = prepare_data(config)
        classes = f", {data.num_classes} classes" if config.task == "classification" else ""
        print(f"Data: {data.source}, {data.num_tokens:,} tokens, {data.tokenizer.kind} tokenizer with "
              f"{data.tokenizer.vocab_size} ids; {len(data.train):,} train / {len(data.val):,} val sequences{classes}")
        model_passed_in = model is not None
        user_files = None
        if model is None:
            if config.model_source != "template":
                user_files = resolve_user_model_files(config.model_source, config.model_path, config.gist_id, out)
            model = build_model(config, data.tokenizer.vocab_size, data.num_classes, data.pad_id, user_files)
        else:  # the caller's own nn.Module: the same checks a model file gets, before any training
            check_embedding_fits(model, data.tokenizer.vocab_size)
            check_model(model, build_task(config), data.tokenizer.vocab_size, config.max_seq_len, data.num_classes,
                        source=f"the {type(model).__name__} passed to train()")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"Model: {type(model).__name__}, {n_params / 1e6:.2f}M parameters")

        task = build_task(config)
        train_loader, val_loader = build_dataloaders(config, data.train, data.val,
                                                     pin_memory=decision.device.kind == "cuda")
        module = build_module(config, model, task, len(train_loader))
        if resume is not None:  # everything that decides the resume is checked before anything is written
            problems = resume_problems(resume, module, _tokenizer_change(out, data, config))
            if problems:
                handle_changed_run(out, problems, on_change)
                resume = None
            else:
                remove_checkpoints_after(out, resume)
        _save_run_files(out, config, data.tokenizer, user_files)

        stats = RunRecorder(task.tokens_in, flush_every=config.log_every_n_steps, precision=decision.precision)
        callbacks = build_callbacks(config, decision, stats) + list(extra_callbacks or [])
        loggers = build_loggers(config, decision, model, data.tokenizer.vocab_size)  # an online W&B run starts here
        resume_from = resume.path if resume else None
        with finish_wandb_on_exit(loggers):  # a re-run in the notebook must not attach to this run
            trainer = build_trainer(config, decision, callbacks, loggers)
            if resume is not None:
                print(f"Resuming from {resume_from} (step {resume.global_step})")
                resume.state = {}  # release the memory map before Lightning loads the file itself
            with _stopped_at_once_is_reported(trainer):
                trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
        if resume_from and stats.start_step is None:
            print(f"Nothing to train: {resume_from} already reached max_epochs={config.max_epochs}"
                  f"{'' if config.max_steps is None else f' or max_steps={config.max_steps}'}. "
                  "Raise them to train further, or set resume=False to start fresh.")
        return self._result(config, decision, trainer, stats, model, data, resume_from, model_passed_in)

    def _result(self, config, decision, trainer, stats, model, data, resume_from, model_passed_in) -> TrainingResult:
        ckpt = trainer.checkpoint_callback
        best = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else None
        last = last_checkpoint(Path(config.output_dir).resolve())
        history = read_history(Path(config.output_dir) / LOGS_DIRNAME)
        return TrainingResult(
            config=config, output_dir=Path(config.output_dir), best_checkpoint=best, last_checkpoint=last,
            train_loss=history.train[-1][1] if history.train else None,
            val_loss=history.val[-1][1] if history.val else None,
            global_step=trainer.global_step,
            steps_run=0 if stats.start_step is None else trainer.global_step - stats.start_step,
            tokens_per_sec=stats.tokens_per_sec, precision=decision.precision, precision_reason=decision.reason,
            resumed_from=resume_from, train_history=history.train, val_history=history.val,
            model=model.eval(), tokenizer=data.tokenizer,
            val_accuracy=history.val_accuracy[-1][1] if history.val_accuracy else None,
            label_names=list(data.label_names), pad_id=data.pad_id, model_passed_in=model_passed_in,
        )


def _tokenizer_change(out: Path, data, config: WizardConfig) -> Optional[str]:
    """Why the tokenizer built now differs from the one the checkpoint was trained with, or None."""
    saved = out / TOKENIZER_DIRNAME
    if not saved.exists() or tokenizer_fingerprint(load_tokenizer(saved)) == tokenizer_fingerprint(data.tokenizer):
        return None
    return (f"the {data.tokenizer.kind} tokenizer built from {data.source} differs from the run's {saved} "
            "(the data changed since the checkpoint was written)")


def _save_run_files(out: Path, config: WizardConfig, tokenizer, user_files) -> None:
    """config.json, tokenizer/ and the model code copy, each written atomically; a resume keeps its tokenizer."""
    config.save(out / CONFIG_FILENAME)
    if not (out / TOKENIZER_DIRNAME).exists():
        with atomic_folder(out / TOKENIZER_DIRNAME) as folder:
            tokenizer.save(folder)
    if user_files is not None and config.model_source == "file":
        keep_model_copy(user_files, out)


@contextmanager
def _stopped_at_once_is_reported(trainer: pl.Trainer):
    """Lightning answers a KeyboardInterrupt with sys.exit(1) and leaves SIGINT ignored; say what happened."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    except TrainingStopped as e:
        print(str(e))
        raise
    except SystemExit:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
        last = last_checkpoint(trainer.default_root_dir)
        raise TrainingStopped(
            f"Training stopped at once at step {trainer.global_step}, without a new checkpoint. "
            + (f"Run again with the same output_dir to continue from {last}." if last else "No checkpoint was saved.")
        ) from None


def train(config: Optional[WizardConfig] = None, model: Optional[nn.Module] = None,
          device: Optional[DeviceInfo] = None, on_change: str = "refuse") -> TrainingResult:
    """Config-first entry: train(config) builds the config's template; pass model= to train your own.

    on_change="start_new" (the notebook) moves a run in output_dir that this config cannot continue to
    output_dir/archive/ and starts anew; "refuse" (the default, the command line) raises instead.
    """
    return TrainingCoordinator(config, device=device).train(model, on_change=on_change)



__all__ = ["TrainingCoordinator", "TrainingResult", "train", "sample_text", "classify_texts"]

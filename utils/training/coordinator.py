"""train(): one call from a WizardConfig to a trained model, its checkpoints and metrics.

The recipe (_Recipe): decide the precision, lock the run folder, plan the resume, set up the data and the model
(utils.plan.plan_run: the run as `estimate`, the inspection and the wizard see it), check them, set up the
training (checking that a resume fits before anything is written), fit with Lightning, read the result.
With several processes (devices x num_nodes) only global rank zero locks the folder, writes the run's
files and prints; the others prepare after it, reading its caches (utils.training.distributed).
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerStatus
from torch import nn

from utils.config import CONFIG_FILENAME, SETTINGS, WizardConfig, report_unused_settings, shown_value
from utils.data import PreparedData
from utils.data.tokenizers import load_tokenizer, tokenizer_fingerprint
from utils.env import DeviceInfo, detect_device
from utils.files import atomic_folder, make_output_dir, remove_temp_files
from utils.formatting import format_bytes, format_duration
from utils.inference import Predictor, classify_texts, sample_text  # sample_text, classify_texts: see __all__
from utils.models.adapters import check_adapters, count_parameters, describe_storage, describe_trainable, uses_adapters
from utils.models.tasks import TASKS
from utils.models.user_models import keep_model_copy
from utils.plan import DataPlan, RunPlan, plan_data, plan_run, training_device
from utils.plan.memory_model import BatchTooLargeError, MemoryModel, check_memory, memory_line
from utils.precision import PrecisionDecision, resolve_precision
from utils.run_folder.checkpoints import (LOGS_DIRNAME, ON_CHANGE, TOKENIZER_DIRNAME, IncompatibleCheckpointError,
                                        ResumePoint, find_resume_point, handle_changed_run, last_checkpoint,
                                        best_checkpoint, move_run_aside, optimizer_changes, plan_resume,
                                        remove_checkpoints_after, remove_kept_checkpoints, resume_problems,
                                        write_labels)
from utils.run_folder.history import History, read_history
from utils.run_folder.lock import RunLock
from utils.training.builder import (build_callbacks, build_dataloaders, build_loggers, build_module, build_trainer,
                                    check_strategy, check_training_windows, describe_batch, describe_speedups,
                                    devices_per_node, fine_tuning_note)
from utils.training.callbacks.last_checkpoint import TrainingStopped
from utils.training.callbacks.recorder import RunRecorder
from utils.training.distributed import Launch, check_ranks, plan_launch, quiet_unless_rank_zero
from utils.training.estimate import Estimate
from utils.training.module import TransformerModule
from utils.training.run_estimate import RunEstimate
from utils.wandb_helpers import finish_wandb_on_exit


@dataclass
class TrainingResult(Predictor):
    """What a run produced; generate() / predict() / predict_proba() from utils.inference. To export it:
    utils.export.export_result(result) (training sits below the export and the Hub and imports neither)."""

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
    model: Optional[nn.Module] = field(default=None, repr=False)  # on the device it trained on; None in the
    # other processes of an FSDP run (its weights are gathered whole on global rank zero only)
    tokenizer: Any = field(default=None, repr=False)
    val_accuracy: Optional[float] = None  # classification: last validation accuracy
    label_names: list = field(default_factory=list)  # classification: class names, index = label id
    pad_id: int = 0  # classification: the id that pads sequences
    model_passed_in: bool = False  # trained through train(model=...): the config cannot rebuild it
    world_size: int = 1  # training processes (devices x num_nodes); tokens_per_sec is all of theirs
    is_global_zero: bool = True  # False in the other processes of a multi-device run: they print and write nothing
    estimate: Optional[Estimate] = field(default=None, repr=False)  # the pre-flight estimate printed at the start
    train_seconds: float = 0.0  # this call's training time, validation excluded
    fit_seconds: float = 0.0  # this call's wall time in trainer.fit, validation and checkpoints included
    loss_scale: Optional[float] = None  # fp16: the GradScaler's scale after the last step; None without a scaler
    skipped_steps: int = 0  # fp16: optimizer steps the GradScaler skipped (inf/NaN gradients), in the whole run
    history: Optional[History] = field(default=None, repr=False)  # every logged series of the whole run (lr, ...)

    def summary(self) -> str:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines = [
            f"precision:        {self.precision} - {self.precision_reason}",
            f"steps:            {self.steps_run} this run, {self.global_step} in total"
            + (f" (resumed from {self.resumed_from})" if self.resumed_from else ""),
            f"train loss:       {fmt(self.train_loss)}",
            f"val loss:         {fmt(self.val_loss)}",
            *TASKS[self.config.task].summary_lines(self.val_accuracy),
            *self._whole_set_lines(),
            f"throughput:       {self.tokens_per_sec:,.0f} tokens/s"
            + (f" (summed over {self.world_size} processes)" if self.world_size > 1 else ""),
            *self._timing_lines(),
            *self._fp16_lines(),
            f"best checkpoint:  {self.best_checkpoint or 'none saved'}",
            f"last checkpoint:  {self.last_checkpoint or 'none saved'}",
        ]
        return "\n".join(lines)

    def notebook_next_step(self) -> str:
        """The step a notebook user takes after the Train cell, in the notebook's words (the CLI prints its own)."""
        use = "samples text from the model" if self.config.task == "lm" else "labels a text with the model"
        return (f"Next: the Results cell plots the loss curves and {use}; Export writes it to "
                f"{self.output_dir / 'export'} and loads it back. To train longer, raise Epochs in the wizard "
                "and Run all again: training resumes from the last checkpoint.")

    def export(self, *args, **kwargs):
        """Moved (training does not import the export): says where, instead of a bare AttributeError."""
        raise AttributeError("result.export(...) moved: from utils.export import export_result; "
                             "export_result(result, ...) takes the same arguments and writes the same folder")

    def _fp16_lines(self) -> list[str]:
        """The GradScaler's record (also in metrics.csv as amp/loss_scale, amp/skipped_steps) and what it means."""
        if self.loss_scale is None:
            return []
        share = self.skipped_steps / max(1, self.global_step)
        if self.skipped_steps == 0:
            verdict = "healthy: no step overflowed"
        elif share <= 0.05 or self.skipped_steps <= 3:
            verdict = "healthy: a few skipped steps are normal while the GradScaler finds its scale"
        else:
            verdict = (f"watch it: {share:.0%} of steps overflowed; if the loss stalls, lower learning_rate or "
                       "use precision='bf16-mixed' (Ampere or newer) or '32-true'")
        return [f"loss scale:       {self.loss_scale:g} (fp16 GradScaler, after the last step)",
                f"skipped steps:    {self.skipped_steps} of {self.global_step} (inf/NaN gradients; not applied)",
                f"fp16 health:      {verdict}"]

    def _whole_set_lines(self) -> list[str]:
        """The last validation's perplexity (lm) or macro-F1 (classification), from the run's logs."""
        h = self.history
        if h is None:
            return []
        lines = [f"val perplexity:   {h.val_perplexity[-1][1]:.4g}"] if h.val_perplexity else []
        return lines + ([f"val macro-F1:     {h.val_macro_f1[-1][1]:.4f}"] if h.val_macro_f1 else [])

    def _timing_lines(self) -> list[str]:
        if not self.steps_run:
            return []
        actual = self.train_seconds / self.steps_run
        if self.estimate is None:
            return [f"time:             {actual:.3g} s/step, {format_duration(self.fit_seconds)} in total"]
        return [f"time (estimated): {self.estimate.compare(actual, self.fit_seconds)}"]


def train(config: Optional[WizardConfig] = None, model: Optional[nn.Module] = None,
          device: Optional[DeviceInfo] = None, on_change: str = "refuse",
          extra_callbacks: Optional[list[pl.Callback]] = None) -> TrainingResult:
    """Train the config's model (or `model`, your own nn.Module) and return what the run produced.

    device: detected when not given (tests pass a DeviceInfo standing for a T4 or an A100).
    on_change: when output_dir holds a run this config cannot continue, "refuse" (the command line)
    raises IncompatibleCheckpointError; "start_new" (the notebook) moves it to output_dir/archive/.
    """
    config = (config or WizardConfig()).validate()
    report_unused_settings(config)  # a data path given is refused; other settings the choices rule out get a note
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change={on_change!r}; choose one of {', '.join(map(repr, ON_CHANGE))}")
    # One decision for every process: each device of a multi-device run is checked to be the same GPU.
    decision = resolve_precision(config.use_mixed_precision, config.precision, device or detect_device(config.devices))
    check_strategy(config, decision.device.kind)
    check_adapters(config)  # a missing bitsandbytes or a LoRA target that names no module: before anything is written
    per_node = devices_per_node(config, decision.device.kind)
    recipe = _Recipe(config, decision, plan_launch(per_node * config.num_nodes, decision.device.kind), on_change)
    is_zero = recipe.launch.is_zero
    out = make_output_dir(config.output_dir) if is_zero else Path(config.output_dir)  # a file or an unwritable
    # place is named before anything starts
    with quiet_unless_rank_zero(recipe.launch), (RunLock(out) if is_zero else nullcontext()):  # one run per folder
        print(f"Precision: {decision.precision} - {decision.reason}")
        run = recipe.prepare(model)
        print(describe_batch(config, per_node, run.data))
        return _fit(run, extra_callbacks or [])


@dataclass
class _Run:
    """Everything built for one call of train(), before fitting."""

    config: WizardConfig
    decision: PrecisionDecision
    data: PreparedData
    model: nn.Module
    module: TransformerModule
    train_loader: Any
    val_loader: Any
    resume: Optional[ResumePoint]
    model_passed_in: bool
    launch: Launch
    estimate: Optional[Estimate] = None  # from the run's own first steps (clock), once they ran
    clock: Optional[RunEstimate] = None  # times those steps; None in the other processes and with nothing to train
    memory: Optional[MemoryModel] = None  # the memory model the batch was accepted with (rank zero)
    kept_checkpoints: list = field(default_factory=list)  # removed once this run saves a best of its own
    notebook: bool = False  # on_change="start_new": messages in the wizard's words


class _Recipe:
    """train()'s steps, in order: set up the folder, the data, the model; check them; set up the training.

    The run itself is utils.plan.plan_run's RunPlan (the one `estimate`, the inspection and the wizard read).
    Only global rank zero writes (the others read its caches and follow its resume decision), in two places:
    the folder before the run is planned (_set_up_folder), the run's files once everything passed its checks
    (_write_run_files). Nothing in output_dir is written before the resume is known to fit."""

    def __init__(self, config: WizardConfig, decision: PrecisionDecision, launch: Launch, on_change: str):
        self.config, self.decision, self.launch, self.on_change = config, decision, launch, on_change
        self.out = Path(config.output_dir)
        self.notebook = on_change == "start_new"
        self.resume: Optional[ResumePoint] = None
        self.move_note: Optional[str] = None  # the run in output_dir is moved to archive/ once the new one passed

    def prepare(self, model: Optional[nn.Module]) -> _Run:
        if not self.launch.is_zero:  # rank zero decides the resume and writes the run's files first
            self.launch.wait_for_rank_zero()
        self._set_up_folder()
        pl.seed_everything(self.config.seed, workers=True, verbose=False)
        plan = self._set_up_model(self._set_up_data(), model)
        memory = self._check(plan)
        run = self._set_up_training(plan, memory)
        if self.launch.is_zero:
            self._write_run_files(plan)
            self.launch.release_others()
        return run

    def _set_up_folder(self) -> None:
        """Rank zero: temp files of an interrupted write go; a refused checkpoint fails fast, before the slow steps
        (a run to move aside waits for the new inputs). The others read the resume point rank zero kept."""
        if not self.launch.is_zero:
            self.resume = find_resume_point(self.out) if self.config.resume else None
            return
        removed = remove_temp_files(self.out)
        if removed:
            print(f"Removed {len(removed)} temp file(s) left by an interrupted write in {self.out}.")
        self.resume, self.move_note = plan_resume(self.config, self.on_change)

    def _set_up_data(self) -> DataPlan:
        """The data, said in one line; a max_seq_len too long for it is named before the model is built (a
        forward pass at that length, the memory check, is slow). The other processes start from rank zero's
        tokenizer: trained once, and its token cache is theirs too."""
        config = self.config
        data_plan = plan_data(config, None if self.launch.is_zero else load_tokenizer(self.out / TOKENIZER_DIRNAME))
        data, kind = data_plan.data, data_plan.data.tokenizer.kind  # in the wizard's words ('characters', not 'char')
        if kind in SETTINGS["tokenizer_strategy"].choices:
            kind = shown_value("tokenizer_strategy", kind).lower()
        print(f"Data: {data.source}, {data.num_tokens:,} tokens, {kind} tokenizer with "
              f"{data.tokenizer.vocab_size} ids; {len(data.train):,} train / {len(data.val):,} val sequences"
              f"{data_plan.task.describe_data(data)}")
        if not data.chat:  # chat examples are whole conversations, not windows of max_seq_len: any count fills batches
            check_training_windows(config, len(data.train), data.num_tokens, max_seq_len_only=True)
        return data_plan

    def _set_up_model(self, data_plan: DataPlan, model: Optional[nn.Module]) -> RunPlan:
        """The model (the config's, or the caller's own), placed where this process trains before anything runs it."""
        config, decision = self.config, self.decision
        plan = plan_run(config, decision, data=data_plan, model=model, measure=False,
                        place_on=training_device(config, decision, self.launch.local_rank))
        print(f"Model: {type(plan.model).__name__}, {count_parameters(plan.model)[1] / 1e6:.2f}M parameters")
        if uses_adapters(config):
            print(f"{describe_trainable(plan.model)}; {config.finetune_method}, rank {config.lora_rank}")
            print(describe_storage(config, decision))
        return plan

    def _check(self, plan: RunPlan) -> Optional[MemoryModel]:
        """Rank zero: a max_seq_len no device holds, a model that sees the future, a batch_size the device cannot
        hold (refused in seconds with the batch that fits, before any batch exists): one measurement for all, as
        every process holds the same model on a GPU of the same kind (utils.env.detect_device). Then the data
        must fill one batch."""
        config, memory = self.config, None
        if self.launch.is_zero:
            plan.check_sequence_length()
            if config.inspect:  # a model that sees the future or leaves a layer unused stops here
                from utils.inspection import preflight  # the inspection's modules load only when asked for

                print(preflight(config, self.decision, plan.model, plan.task, plan.data))
        note = fine_tuning_note(config, wizard_words=self.notebook)
        if note:
            print(note)
        if self.launch.is_zero:
            memory = plan.measure(self.launch.world_size)
            for line in plan.notes:  # gradient checkpointing turned on (auto)
                print(line)
            check_memory(memory, config)
            print(memory_line(memory, config.batch_size))
        if not plan.data.chat:
            check_training_windows(config, len(plan.data.train), plan.data.num_tokens)
        return memory

    def _set_up_training(self, plan: RunPlan, memory: Optional[MemoryModel]) -> _Run:
        """Loaders, the LightningModule, the clock of the run's own first steps (utils.training.run_estimate: no
        extra steps before the run), and whether the resume point fits the run now planned."""
        config, decision, launch = self.config, self.decision, self.launch
        train_loader, val_loader = build_dataloaders(config, plan.data.train, plan.data.val,
                                                     pin_memory=decision.device.kind == "cuda",
                                                     num_replicas=launch.world_size)
        module = build_module(config, plan.model, plan.task, len(train_loader), decision)
        clock, steps_left = None, module.total_steps - (self.resume.global_step if self.resume else 0)
        if launch.is_zero and steps_left > 0:
            clock = RunEstimate(config, decision, memory, len(train_loader), len(val_loader), steps_left)
        print(describe_speedups(config, decision))
        kept = self._settle_resume(module, plan.data)
        return _Run(config, decision, plan.data, plan.model, module, train_loader, val_loader, self.resume,
                    plan.model_passed_in, launch, None, clock, memory, kept, notebook=self.notebook)

    def _settle_resume(self, module: TransformerModule, data: PreparedData) -> list:
        """The best checkpoints kept as the run's only best (see checkpoints); a resume this run cannot continue is
        handled as on_change says (rank zero) or refused (the others: rank zero moved such a run aside first)."""
        if self.resume is None:
            return []
        problems = resume_problems(self.resume, module, _tokenizer_change(self.out, data))
        if problems and not self.launch.is_zero:
            raise IncompatibleCheckpointError(f"this process sees a checkpoint in {self.out} that rank zero did not "
                                              f"resume from ({'; '.join(problems)}); is output_dir shared?")
        if problems:
            handle_changed_run(self.out, problems, self.on_change)
            self.resume = None
            return []
        if not self.launch.is_zero:
            return []
        kept = remove_checkpoints_after(self.out, self.resume)
        for line in optimizer_changes(self.out, self.config, self.resume.global_step):  # before config.json changes
            print(line)
        return kept

    def _write_run_files(self, plan: RunPlan) -> None:
        """Rank zero, once data, model and batch passed their checks: the old run aside (when asked), then the
        run's files."""
        if self.move_note:
            move_run_aside(self.out, self.move_note)
        _save_run_files(self.out, self.config, plan.data, plan.user_files)


def _fit(run: _Run, extra_callbacks: list[pl.Callback]) -> TrainingResult:
    config, decision = run.config, run.decision
    recorder = RunRecorder(run.module.task.tokens_in, flush_every=config.log_every_n_steps,
                           precision=decision.precision)
    callbacks = build_callbacks(config, decision, recorder, wizard_words=run.notebook) + extra_callbacks
    callbacks += [run.clock] if run.clock is not None else []
    resume_step = run.resume.global_step if run.resume else 0  # before fit: the resume point's state is released
    nothing_to_train = run.resume is not None and resume_step >= run.module.total_steps
    loggers = build_loggers(config, decision, run.model, run.data.tokenizer.vocab_size,  # an online W&B run starts here
                            nothing_to_train=nothing_to_train)
    resume_from = run.resume.path if run.resume else None
    # FSDP replaces the model's blocks by sharded units in place: a plain copy, made while it is still whole
    # (on the CPU), receives the trained weights afterwards (see _trained_model).
    plain = copy.deepcopy(run.model) if config.strategy == "fsdp" else None
    with finish_wandb_on_exit(loggers):  # a re-run in the notebook must not attach to this run
        trainer = build_trainer(config, decision, callbacks, loggers, run.model)
        check_ranks(run.launch, trainer)
        run.train_loader.sampler.rank = trainer.global_rank  # its shard of every epoch (see ResumableSampler)
        if run.resume is not None:
            print(f"Resuming from {resume_from} (step {run.resume.global_step})")
            run.resume.state = {}  # release the memory map before Lightning loads the file itself
        started = time.perf_counter()
        with _stopped_at_once_is_reported(trainer), _out_of_memory_is_the_batch(run, trainer):
            # weights_only=False: our own checkpoint holds the loops' and callbacks' state, not only tensors;
            # said explicitly, Lightning logs no "`weights_only` was not set" line on every resume.
            trainer.fit(run.module, run.train_loader, run.val_loader, ckpt_path=resume_from and str(resume_from),
                        weights_only=False)
        if trainer.checkpoint_callback is not None:
            remove_kept_checkpoints(run.kept_checkpoints, trainer.checkpoint_callback.best_model_path)
    if resume_from and recorder.start_step is None:
        print(_nothing_to_train(config, resume_from, resume_step, run.notebook))
    run.estimate = run.clock.estimate if run.clock is not None else None
    run.model = _trained_model(trainer, run.model, plain)
    return _result(run, trainer, recorder, resume_from, time.perf_counter() - started)


def _trained_model(trainer: pl.Trainer, model: nn.Module, plain: Optional[nn.Module]) -> Optional[nn.Module]:
    """The model for sampling and export, on the device it trained on.

    Lightning's teardown moves the LightningModule to the CPU after fit; it goes back, so the end-of-run sample
    and generate() run where training did. Under FSDP each process holds shards: Lightning's full state dict
    gathers them (a collective, whole on global rank zero only) into `plain`, a copy of the model as built.
    """
    device = trainer.strategy.root_device
    if plain is None:
        return model.to(device)
    full = trainer.strategy.lightning_module_state_dict()  # FSDPStrategy's default state_dict_type is "full"
    if not trainer.is_global_zero:
        return None
    plain.load_state_dict({key[len("model."):]: value for key, value in full.items() if key.startswith("model.")})
    return plain.to(device)


def _nothing_to_train(config: WizardConfig, resume_from: Path, resume_step: int, notebook: bool) -> str:
    """What to change when the run already reached its length: the wizard's words in the notebook (it has no
    resume field), config names on the command line."""
    if not notebook:
        return (f"Nothing to train: {resume_from} already reached max_epochs={config.max_epochs}"
                f"{'' if config.max_steps is None else f' or max_steps={config.max_steps}'}. "
                "Raise them to train further, or set resume=False to start fresh.")
    by_steps = config.max_steps is not None and resume_step >= config.max_steps
    limit = "max_steps" if by_steps else "max_epochs"
    label = SETTINGS[limit].label
    return (f"Nothing to train: the run in {config.output_dir} already reached {label} = {getattr(config, limit)}. "
            f"To train it further, raise {label} in the wizard; to start a new run instead, choose a new "
            f"{SETTINGS['output_dir'].label} there.")


def _result(run: _Run, trainer: pl.Trainer, recorder: RunRecorder, resume_from: Optional[Path],
            fit_seconds: float) -> TrainingResult:
    config, data = run.config, run.data
    ckpt = trainer.checkpoint_callback
    history = read_history(Path(config.output_dir) / LOGS_DIRNAME)
    return TrainingResult(
        config=config, output_dir=Path(config.output_dir),
        best_checkpoint=(Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path and
                         Path(ckpt.best_model_path).exists() else best_checkpoint(Path(config.output_dir).resolve())),
        last_checkpoint=last_checkpoint(Path(config.output_dir).resolve()),
        train_loss=history.train[-1][1] if history.train else None,
        val_loss=history.val[-1][1] if history.val else None,
        global_step=trainer.global_step,
        steps_run=0 if recorder.start_step is None else trainer.global_step - recorder.start_step,
        tokens_per_sec=recorder.tokens_per_sec_this_call, precision=run.decision.precision,
        precision_reason=run.decision.reason, resumed_from=resume_from, train_history=history.train,
        val_history=history.val, model=run.model.eval() if run.model is not None else None,
        tokenizer=data.tokenizer,
        val_accuracy=history.val_accuracy[-1][1] if history.val_accuracy else None,
        label_names=list(data.label_names), pad_id=data.pad_id, model_passed_in=run.model_passed_in,
        world_size=trainer.world_size, is_global_zero=trainer.is_global_zero, estimate=run.estimate,
        train_seconds=recorder.seconds_this_call, fit_seconds=fit_seconds, history=history,
        loss_scale=history.loss_scale[-1][1] if history.loss_scale else None, skipped_steps=recorder.skipped_total,
    )


def _tokenizer_change(out: Path, data: PreparedData) -> Optional[str]:
    """Why the tokenizer built now differs from the one the checkpoint was trained with, or None."""
    saved = out / TOKENIZER_DIRNAME
    if not saved.exists() or tokenizer_fingerprint(load_tokenizer(saved)) == tokenizer_fingerprint(data.tokenizer):
        return None
    return (f"the {data.tokenizer.kind} tokenizer built from {data.source} differs from the run's {saved} "
            "(the data changed since the checkpoint was written)")


def _save_run_files(out: Path, config: WizardConfig, data: PreparedData, user_files) -> None:
    """config.json, tokenizer/, a classifier's labels.json and the model code copy, each written atomically;
    a resume keeps its tokenizer. With them a finished run loads for inference (utils.loading.load_run)."""
    config.save(out / CONFIG_FILENAME)
    if not (out / TOKENIZER_DIRNAME).exists():
        with atomic_folder(out / TOKENIZER_DIRNAME) as folder:
            data.tokenizer.save(folder)
    if config.task == "classification":
        write_labels(out, data.label_names, data.pad_id)
    if user_files is not None and config.model_source == "file":
        keep_model_copy(user_files, out)


@contextmanager
def _out_of_memory_is_the_batch(run: _Run, trainer: pl.Trainer):
    """A training step that runs out of device memory (the memory model was too hopeful: fragmentation, a kernel's
    workspace) is the batch being too large: said as BatchTooLargeError with a batch half as large and the
    accumulation that keeps the effective batch, not as the allocator's traceback. Checkpoints already saved stay."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.cuda.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise  # only the allocators' own failures (CUDA's, and the CPU's DefaultCPUAllocator)
        config, where = run.config, run.decision.device.describe()
        B, A = config.batch_size, config.gradient_accumulation_steps
        expected = f" (the memory model said about {format_bytes(run.memory.bytes_at(B))})" if run.memory else ""
        step = f"training step {trainer.global_step + 1}"
        if B == 1:
            raise BatchTooLargeError(f"batch_size=1 ran out of {where} memory in {step}{expected}; pick a smaller "
                                     "model or max_seq_len, or gradient_checkpointing=true, or finetune_method="
                                     "'lora'/'qlora'.") from None
        raise BatchTooLargeError(f"batch_size={B} ran out of {where} memory in {step}{expected}; batch_size={B // 2} "
                                 f"with gradient_accumulation_steps={-(-B * A // (B // 2))} keeps the effective batch."
                                 ) from None


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
        stopped = TrainingStopped(
            f"Training stopped at once at step {trainer.global_step}, without a new checkpoint. "
            + (f"Run again with the same output_dir to continue from {last}." if last else "No checkpoint was saved.")
        )
        print(str(stopped))  # raised in this except clause, it would pass the one above that prints it
        raise stopped from None


__all__ = ["TrainingResult", "train", "sample_text", "classify_texts"]

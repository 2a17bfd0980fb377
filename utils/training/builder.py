"""The one place a WizardConfig becomes explicit arguments for the model, module, data and Trainer."""

from __future__ import annotations

import functools
import logging
import math
import sys
import warnings
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from utils.config import ConfigError, WizardConfig
from utils.data import PreparedData
from utils.data.packing import describe_packing
from utils.data.sources import DataError
from utils.data.spec import batch_lengths, build_data_spec  # noqa: F401  (defined with the data; for importers)
from utils.models.adapters import uses_adapters
from utils.plan.memory_model import template_blocks  # FSDP's units, as the memory model counts them
from utils.precision import PrecisionDecision
from utils.training.callbacks.recorder import RecordedProgressBar, RunRecorder, ValidateAtMaxSteps
from utils.training.callbacks.last_checkpoint import LastCheckpoint
from utils.run_folder.checkpoint_io import AtomicCheckpointIO
from utils.run_folder.checkpoints import LAST_NAME, LOGS_DIRNAME, checkpoint_dir
from utils.training.callbacks.health import TrainingHealthCallback
from utils.training.module import TransformerModule
from utils.wandb_helpers import build_wandb_logger


def check_training_windows(config: WizardConfig, num_train: int, num_tokens: int,
                           max_seq_len_only: bool = False) -> None:
    """A language model's training split must fill one batch of max_seq_len windows, or fail before training.

    A max_seq_len near the corpus length leaves a handful of enormous windows: each step is one huge partial
    batch and the run looks hung. Classification truncates each text to max_seq_len, so it needs no check.
    max_seq_len_only: fail only when a shorter max_seq_len would fill the batch (the check before the model is
    built); a batch_size no max_seq_len can fill is then left to the memory check and the check after it.
    """
    if config.task != "lm" or num_train >= config.batch_size:
        return
    fits = _largest_seq_len_for(config.batch_size, num_tokens, config.val_split)
    if max_seq_len_only and fits < 2:
        return
    fix = f"set max_seq_len <= {fits}" if fits >= 2 else "use more text"
    raise DataError(f"max_seq_len={config.max_seq_len} cuts the {num_tokens:,} tokens of the data into only "
                    f"{num_train} training sequences of {config.max_seq_len + 1} tokens (val_split={config.val_split:g} "
                    f"holds out {config.val_split:.0%} of them for validation), fewer than one batch "
                    f"(batch_size={config.batch_size}); {fix}, lower val_split, or lower batch_size.")


def _largest_seq_len_for(batch_size: int, num_tokens: int, val_split: float) -> int:
    """The longest windows that still leave batch_size of them for training after the validation split."""
    # Start just below the answer (about batch_size / (1 - val_split)): counting up from batch_size takes
    # seconds for a huge batch_size. Training windows only grow with the total, so the first that fits is it.
    windows = max(batch_size, math.floor(batch_size / (1 - val_split)) - 2) if val_split < 1 else batch_size
    while windows > batch_size and windows - 1 - round((windows - 1) * val_split) >= batch_size:
        windows -= 1
    while windows - round(windows * val_split) < batch_size:
        windows += 1
    return (num_tokens - 1) // windows


def build_module(config: WizardConfig, model: nn.Module, task, batches_per_epoch: int,
                 decision: PrecisionDecision) -> TransformerModule:
    """The LightningModule; with config.compile, the model's forward compiled by torch.compile first."""
    if config.compile:
        # In place (nn.Module.compile): the model keeps its own state_dict keys, so checkpoints and exports
        # read as without compile. torch.compile() would wrap it, adding "_orig_mod." to every key.
        model.compile()
    return TransformerModule(model, task, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                             warmup_ratio=config.warmup_ratio, total_steps=total_steps(config, batches_per_epoch),
                             adamw_options=adamw_options(decision.device.kind),
                             grad_norm_every=config.log_every_n_steps,
                             trainable_only=uses_adapters(config))


def adamw_options(device_kind: str) -> dict:
    """One fused kernel for the whole AdamW update on a GPU; elsewhere the multi-tensor (foreach) loop."""
    return {"fused": True} if device_kind == "cuda" else {"foreach": True}


FINE_TUNING_LR = 1e-4  # above this, fine-tuning a pretrained model gets a note (BERT and GPT-2 use 2e-5 to 1e-4)
# LoRA/QLoRA adapters start at zero and train only a small update on a frozen base: their usual rates are higher
# (the LoRA and QLoRA papers' 1e-4 to 2e-4; the README's LoRA example uses 2e-4).
ADAPTER_LR_RANGE = (1e-4, 2e-4)


def fine_tuning_note(config: WizardConfig, wizard_words: bool = False) -> str:
    """A note when a pretrained model is to be fine-tuned at a learning rate above the usual range for its method
    (full fine-tuning, or LoRA/QLoRA adapters); "" otherwise. A note, not a change: the config decides.
    wizard_words: in the notebook's words."""
    adapters = uses_adapters(config)
    low, high = ADAPTER_LR_RANGE if adapters else (2e-5, FINE_TUNING_LR)
    if config.model_source != "pretrained" or config.learning_rate <= high:
        return ""
    risk = ("for LoRA adapters and may make the loss diverge" if adapters else
            "for fine-tuning a pretrained model and may overwrite what it learnt")
    usual = f"{short_rate(low)} to {short_rate(high)} is usual"
    if wizard_words:
        return f"Note: a Learning rate of {config.learning_rate:g} is high {risk}; {usual} (the wizard's Training step)."
    return (f"Note: learning_rate={config.learning_rate:g} is high {risk}; {usual} "
            f"(e.g. --set learning_rate={short_rate(high if adapters else 5e-5)}).")


def short_rate(rate: float) -> str:
    return f"{rate:.0e}".replace("e-0", "e-")  # 2e-5, as people write learning rates


def describe_speedups(config: WizardConfig, decision: PrecisionDecision) -> str:
    """One line said once per run: which AdamW kernel, whether TF32 is on, whether the model is compiled."""
    kernel = "fused" if adamw_options(decision.device.kind).get("fused") else "foreach"
    parts = [f"AdamW ({kernel})"] + (["TF32 matmuls on"] if decision.tf32 else [])
    parts.append("model compiled with torch.compile" if config.compile else "torch.compile off")
    return "Speed: " + ", ".join(parts)


def total_steps(config: WizardConfig, batches_per_epoch: int) -> int:
    """Optimizer steps the run will take (Lightning steps on an epoch's last, partial accumulation too).

    Computed here rather than by trainer.estimated_stepping_batches: that property builds the training
    loader before a resumed checkpoint is loaded, and Lightning then never restores the loader's position.
    """
    steps = math.ceil(batches_per_epoch / config.gradient_accumulation_steps) * config.max_epochs
    return max(1, min(steps, config.max_steps) if config.max_steps is not None else steps)


def build_dataloaders(config: WizardConfig, train_ds, val_ds, pin_memory: bool,
                      num_replicas: int = 1) -> tuple[DataLoader, DataLoader]:
    """The training loader's position and shuffle order are part of every checkpoint (see ResumableSampler).

    num_replicas: training processes; each reads its own shard of every epoch (its rank is set once the
    Trainer knows it, see ResumableSampler). Every process validates on the whole validation set.
    """
    # Data lives in memory as token tensors: worker processes would cost more than they save.
    drop_last = len(train_ds) > config.batch_size * num_replicas
    sampler = ResumableSampler(train_ds, seed=config.seed, num_replicas=num_replicas, drop_last=drop_last)
    with warnings.catch_warnings():
        # torchdata's loader calls torch.set_vital, which torch 2.13 deprecates: noise with nothing to act on
        # (Notebook 6 shows it as a red block under the wizard's review).
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        train = StatefulDataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, pin_memory=pin_memory,
                                   drop_last=drop_last, collate_fn=getattr(train_ds, "collate", None),
                                   generator=torch.Generator().manual_seed(config.seed))  # keeps the global RNG out
    val = DataLoader(val_ds, batch_size=config.batch_size, shuffle=False, pin_memory=pin_memory,
                     collate_fn=getattr(val_ds, "collate", None))  # chat examples pad each batch (None: stack)
    return train, val


class ResumableSampler(StatefulDistributedSampler):
    """Shuffles each epoch by (seed, epoch), hands each process its shard and restarts mid-epoch from a checkpoint.

    torchdata's StatefulDistributedSampler: Lightning calls set_epoch, the order of epoch e is a pure
    function of (seed, e), and the StatefulDataLoader saves how far it got. Rank r of W reads positions
    r, r + W, r + 2W, ... of that order, so one step's W batches of B together are the batch of W x B a
    single process would read at that step. The epoch is saved too, because Lightning creates the resumed
    iterator before it calls set_epoch; and so is the number of processes: the position is per process,
    and a run resumed on another number of devices continues from the same place in the epoch's order.
    `rank` is set by the training core once the Trainer has decided it (Lightning's own sampler
    replacement is off: it would drop the saved position).
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=0, shuffle=True, seed=seed, drop_last=drop_last)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch, "num_replicas": self.num_replicas}

    def load_state_dict(self, state_dict: dict) -> None:
        saved_replicas = state_dict.get("num_replicas", 1)
        if saved_replicas != self.num_replicas:  # samples read by all processes, shared out among the new ones
            state_dict = {**state_dict, self._YIELDED: state_dict[self._YIELDED] * saved_replicas // self.num_replicas}
        super().load_state_dict(state_dict)
        self.epoch = state_dict.get("epoch", self.epoch)


def build_callbacks(config: WizardConfig, decision: PrecisionDecision, recorder: RunRecorder,
                    wizard_words: bool = False) -> list[pl.Callback]:
    """last.ckpt on a time schedule (LastCheckpoint) and the best by validation loss (ModelCheckpoint) are
    separate: Lightning's save_last only moves "last" when a new best is saved. wizard_words: messages name
    settings as the wizard shows them (the notebook)."""
    callbacks: list[pl.Callback] = [
        recorder,  # first: a checkpoint's counters include the step it was written after
        TrainingHealthCallback(wizard_words=wizard_words),  # checks what the recorder flushes (before every checkpoint)
        LastCheckpoint(checkpoint_dir(config.output_dir) / LAST_NAME, every_seconds=60 * config.checkpoint_every_minutes,
                       agree_every=config.log_every_n_steps),  # processes vote when the recorder meets them too
        ModelCheckpoint(dirpath=checkpoint_dir(config.output_dir), filename="epoch{epoch:02d}-step{step}-val{val/loss:.4f}",
                        auto_insert_metric_name=False, monitor="val/loss", mode="min", save_top_k=config.save_top_k,
                        save_last=False, every_n_epochs=config.checkpoint_every_n_epochs,
                        enable_version_counter=False),  # a step trained again after a resume replaces its file
        RecordedProgressBar(recorder, refresh_rate=_refresh_rate()),
    ]
    if config.max_steps is not None:
        callbacks.append(ValidateAtMaxSteps(config.max_steps))
    if config.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=config.early_stopping_patience))
    return callbacks


def build_loggers(config: WizardConfig, decision: PrecisionDecision | None = None, model: nn.Module | None = None,
                  vocab_size: int | None = None, nothing_to_train: bool = False) -> list:
    """CSV logs always; a WandbLogger too unless wandb_mode is "disabled" (it needs decision, model, vocab_size)
    or nothing is left to train (a W&B run with no steps would only add an empty run to the project)."""
    # Rows are appended as the RunRecorder logs them (it does before every checkpoint), so the history
    # on disk reaches the last checkpoint whenever the process is killed (utils.run_folder.history).
    loggers = [CSVLogger(save_dir=config.output_dir, name=LOGS_DIRNAME, flush_logs_every_n_steps=10**9)]
    if config.wandb_mode != "disabled" and nothing_to_train:
        print("W&B: nothing is left to train, so no W&B run is opened.")
    elif config.wandb_mode != "disabled":
        if decision is None or model is None or vocab_size is None:
            raise ValueError(f"build_loggers needs decision, model and vocab_size when wandb_mode={config.wandb_mode!r}: "
                             "they fill the W&B run's config")
        loggers.append(build_wandb_logger(config, decision, model, vocab_size))
    return loggers


def devices_per_node(config: WizardConfig, device_kind: str) -> int:
    """Training processes on each machine: config.devices, or with 0 every visible GPU (1 on a CPU)."""
    if config.devices:
        return config.devices
    return max(1, torch.cuda.device_count()) if device_kind == "cuda" else 1


def describe_batch(config: WizardConfig, per_node: int, data: Optional[PreparedData] = None) -> str:
    """The effective batch: what one optimizer step averages its gradient over. Token windows are max_seq_len
    real tokens each; chat examples (data given) are shorter and padded, so their mean real length is said."""
    total = config.batch_size * per_node * config.num_nodes * config.gradient_accumulation_steps
    tokens = f"{total * config.max_seq_len:,} tokens"
    if data is not None and data.chat:
        real = round(total * mean_example_tokens(data.train))
        tokens = f"about {real:,} real tokens on average, at most {total * config.max_seq_len:,}"
    line = (f"Batch: {config.batch_size} sequences per device x {per_node} device(s) x {config.num_nodes} "
            f"machine(s) x {config.gradient_accumulation_steps} accumulation = {total:,} sequences "
            f"({tokens}) per optimizer step")
    packing = describe_packing_choice(config, data) if data is not None and data.chat else ""
    return line + (f"\n{packing}" if packing else "")


def describe_packing_choice(config: WizardConfig, data: PreparedData) -> str:
    """Chat data's packing line: how full the packed rows are, or why pack_sequences='auto' left them padded."""
    if data.train.pack_to:
        return describe_packing(data.train.lengths(), config.batch_size, data.train.pack_to)
    if config.pack_sequences == "auto" and data.train.packing_note:
        return f"Packing: off - {data.train.packing_note}; each conversation is padded to its batch's longest"
    return ""


def mean_example_tokens(examples) -> float:
    """The mean input length of chat examples (utils.data.chat.ChatExamples), from their bounds: no pass over them."""
    return float(examples.lengths().double().mean())


FSDP_MIN_PARAMS = 1_000_000  # a user model's submodules with this many parameters become FSDP units


def build_strategy(config: WizardConfig, model: Optional[nn.Module] = None):
    """Lightning's strategy: "auto" and "ddp" by name; FSDP with a wrap policy for the model.

    FSDP shards each wrapped unit's parameters, gradients and optimizer state across the processes. A
    template's transformer Block is one unit each; a user model is wrapped by size (any submodule holding
    FSDP_MIN_PARAMS parameters or more not already inside a unit), as torch's size_based_auto_wrap_policy does.
    """
    if config.strategy != "fsdp":
        return config.strategy
    from pytorch_lightning.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    blocks = template_blocks(model) if model is not None else set()
    policy = blocks or functools.partial(size_based_auto_wrap_policy, min_num_params=FSDP_MIN_PARAMS)
    return FSDPStrategy(auto_wrap_policy=policy)


def check_strategy(config: WizardConfig, device_kind: str) -> None:
    """Refuse, before any slow step, a strategy this machine cannot run."""
    if config.strategy == "fsdp" and device_kind != "cuda":
        raise ConfigError([f"strategy='fsdp' needs CUDA GPUs, but this run is on {device_kind} (Lightning runs FSDP "
                           "on GPUs only); choose strategy='ddp' or 'auto'"])


def build_trainer(config: WizardConfig, decision: PrecisionDecision, callbacks: list, loggers: list,
                  model: Optional[nn.Module] = None) -> pl.Trainer:
    """model: the one being trained, for FSDP's wrap policy (see build_strategy)."""
    precision_args = _precision_args(decision, config.strategy)
    _quiet_lightning()
    apply_matmul_precision(decision)
    return pl.Trainer(
        accelerator={"cuda": "gpu"}.get(decision.device.kind, decision.device.kind),
        devices=devices_per_node(config, decision.device.kind),
        num_nodes=config.num_nodes,
        strategy=build_strategy(config, model),
        use_distributed_sampler=False,  # ResumableSampler shards the data itself and keeps its position
        max_epochs=config.max_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        accumulate_grad_batches=config.gradient_accumulation_steps,
        gradient_clip_val=config.gradient_clip_val or None,
        gradient_clip_algorithm="norm",
        val_check_interval=config.val_check_interval,
        log_every_n_steps=config.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=config.output_dir,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **precision_args,
    )


def apply_matmul_precision(decision: PrecisionDecision) -> None:
    """TF32 for fp32 matmuls where the decision says so (Ampere and newer); a process-wide torch setting,
    left alone otherwise."""
    if decision.tf32:
        torch.set_float32_matmul_precision("high")


def _precision_args(decision: PrecisionDecision, strategy: str = "auto") -> dict:
    args = decision.lightning_args(strategy)
    # checkpoints written beside their target and renamed: never torn
    return {**args, "plugins": [AtomicCheckpointIO()] + args.get("plugins", [])}


def _refresh_rate() -> int:
    """Progress-bar updates every N batches: each one, in a terminal; fewer where redraws are costly."""
    from utils.env import in_colab

    if in_colab():
        return 20  # notebook bars redraw through the browser; fewer updates keep Colab responsive
    if "ipykernel" in sys.modules or sys.stdout.isatty():
        return 1
    return 100  # output piped to a log file (CI, nohup): every redraw is another line of log


def _quiet_lightning() -> None:
    """Drop Lightning's start-up chatter (GPU/TPU availability, worker hints); our own log says what matters."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


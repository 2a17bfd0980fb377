"""plan_run: a run put together once, before it trains, for everyone who asks what the run is.

    plan = plan_run(config, device)   # precision, data, task, model (placed where training runs), memory
    print(memory_line(plan.memory, config.batch_size))

train() (utils.training.coordinator), the `estimate` command and the wizard's Estimate time
(utils.training.estimate), the inspection (utils.inspection.subject) and the wizard's model check
(utils.ui.model_check) all read a RunPlan; none assembles a run on its own. A RunPlan prints nothing and writes
no file of its own (prepare_data keeps its token cache in the run folder's data_cache, as it always has);
what a step decided that a person should hear is kept in notes for the caller to print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from utils.config import WizardConfig
from utils.data import DataSpec, PreparedData, prepare_data
from utils.data.spec import batch_lengths, build_data_spec
from utils.env import DeviceInfo, detect_device
from utils.formatting import format_bytes
from utils.models.adapters import enable_checkpointing
from utils.models.build import build_model, build_task, model_config, place_model
from utils.models.user_models import (UserModelFiles, check_embedding_fits, check_model, load_user_model,
                                      resolve_user_model_files)
from utils.plan.memory_model import MemoryModel, check_sequence_length, measure_memory
from utils.precision import PrecisionDecision, resolve_precision


@dataclass
class DataPlan:
    """The data half of a plan: what train() reports and checks before it builds the model."""

    spec: DataSpec
    data: PreparedData
    task: object  # utils.models.tasks' task object: how the kit calls the model and computes the loss


@dataclass
class RunPlan:
    config: WizardConfig
    decision: PrecisionDecision  # the precision and the device it was decided for
    spec: DataSpec
    data: PreparedData
    task: object
    model: nn.Module  # built as training builds it, on the device it trains on (see plan_run's place_on)
    user_files: Optional[UserModelFiles] = None  # a model file's or Gist's code (train() keeps a copy)
    model_passed_in: bool = False  # train(model=...): the caller's own nn.Module
    memory: Optional[MemoryModel] = None  # the one memory model, once measure() ran
    notes: list = field(default_factory=list)  # what the plan decided that a person should hear

    @property
    def vocab_size(self) -> int:
        return self.data.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def pad_id(self) -> int:
        return self.data.pad_id

    @property
    def label_names(self) -> list:
        return list(self.data.label_names)

    def check_sequence_length(self) -> None:
        """Refuse a max_seq_len no device could hold, before any pass at that length (see memory_model)."""
        check_sequence_length(self.config, self.decision, self.model, self.task, self.vocab_size, self.num_classes)

    def measure(self, world_size: int = 1) -> MemoryModel:
        """The memory model at the data's longest batch; world_size: training processes (FSDP shards the
        state among them). gradient_checkpointing="auto" turns checkpointing on for a pretrained model whose
        batch does not fit without it, and says so in notes."""
        config, seq_len = self.config, batch_lengths(self.config, self.data)[1]
        memory = self._measured(world_size, seq_len)
        if config.model_source == "pretrained" and config.gradient_checkpointing == "auto" and \
                not memory.fits(config.batch_size):
            enable_checkpointing(self.model)
            checkpointed = self._measured(1, seq_len)  # as train() always measured it: one process's view
            self.notes.append(f"Gradient checkpointing: on (auto), as batch_size={config.batch_size} needs about "
                              f"{format_bytes(memory.bytes_at(config.batch_size))} without it and "
                              f"{format_bytes(checkpointed.bytes_at(config.batch_size))} with it.")
            memory = checkpointed
        self.memory = memory
        return memory

    def _measured(self, world_size: int, seq_len: Optional[int]) -> MemoryModel:
        return measure_memory(self.config, self.decision, self.model, self.task, self.vocab_size, self.num_classes,
                              world_size, seq_len=seq_len)


def plan_data(config: WizardConfig, tokenizer=None) -> DataPlan:
    """The config's data prepared as training reads it (tokenizer: one already trained, which the other processes
    of a multi-device run take from rank zero), and its task."""
    spec = build_data_spec(config)
    return DataPlan(spec, prepare_data(spec, tokenizer), build_task(config))


def plan_run(config: WizardConfig, device: Union[DeviceInfo, PrecisionDecision, None] = None, *,
             data: Optional[DataPlan] = None, model: Optional[nn.Module] = None,
             place_on: Union[torch.device, str, None] = "training", measure: bool = True,
             check_user_model: bool = True) -> RunPlan:
    """The run the config describes on device (a DeviceInfo, detected when None, or a PrecisionDecision already
    made for it): precision, data, task and model, and with measure the memory model (after refusing a
    max_seq_len no device holds).

    data: the data half when the caller prepared it already (train() reports and checks it first). model: the
    caller's own nn.Module (train(model=...)), checked on a dummy batch as a model file is. place_on: where the
    model is built: "training" is where a training process puts it (its GPU; the CPU under FSDP, which shards a
    model still on the CPU), None leaves it on the CPU (`estimate --gpu` for a GPU this machine lacks).
    check_user_model=False: a model file or Gist is built without its dummy-batch check (the inspection).
    """
    config = config.validate()
    decision = device if isinstance(device, PrecisionDecision) else resolve_precision(
        config.use_mixed_precision, config.precision, device or detect_device(config.devices))
    data = data or plan_data(config)
    where = training_device(config, decision) if place_on == "training" else place_on
    plan = RunPlan(config, decision, data.spec, data.data, data.task, None, model_passed_in=model is not None)
    plan.model = _placed_model(plan, model, None if where is None else torch.device(where), check_user_model)
    if measure:
        plan.check_sequence_length()
        plan.measure()
    return plan


def training_device(config: WizardConfig, decision: PrecisionDecision, local_rank: int = 0) -> torch.device:
    """Where a training process places the model before anything runs it: every check, measurement and estimate
    then runs the model where it is, on batches made there. FSDP shards a model that is still on the CPU."""
    return torch.device("cpu") if config.strategy == "fsdp" else decision.torch_device(local_rank)


def _placed_model(plan: RunPlan, model: Optional[nn.Module], device: Optional[torch.device],
                  check_user_model: bool) -> nn.Module:
    if model is not None:  # the caller's own nn.Module: the same checks a model file gets, before any training
        check_embedding_fits(model, plan.vocab_size)
        model = place_model(model, device)
        check_model(model, plan.task, plan.vocab_size, plan.config.max_seq_len, plan.num_classes,
                    source=f"the {type(model).__name__} passed to train()")
        return model
    model, plan.user_files = build_planned_model(plan.config, plan.decision, plan.vocab_size, plan.num_classes,
                                                 plan.pad_id, plan.label_names, device, check_user_model)
    return model


def build_planned_model(config: WizardConfig, decision: PrecisionDecision, vocab_size: int, num_classes: int,
                        pad_id: int, label_names: Optional[list] = None, device: Optional[torch.device] = None,
                        check_user_model: bool = True) -> tuple[nn.Module, Optional[UserModelFiles]]:
    """(the config's model, a model file's or Gist's code) as training builds it, seeded by config.seed, placed on
    device. check_user_model=False: a user model is only built and its embedding checked, not run on a dummy batch
    (the inspection's checks then say what is wrong). The inspection calls this directly when the data cannot be
    read (with the vocabulary the wizard assumes); everyone else through plan_run."""
    user_files = None
    if config.model_source in ("file", "gist"):
        user_files = resolve_user_model_files(config.model_source, config.model_path, config.gist_id,
                                              config.output_dir)
    torch.manual_seed(config.seed)  # the same initial weights whoever plans the run (the data uses its own RNGs)
    if user_files is not None and not check_user_model:
        model = load_user_model(user_files, model_config(config, vocab_size, num_classes, pad_id))
        model = place_model(model, device)
        check_embedding_fits(model, vocab_size)  # an id past the embedding would crash every check alike
        return model, user_files
    return build_model(config, vocab_size, num_classes, pad_id, user_files, label_names, decision=decision,
                       device=device), user_files

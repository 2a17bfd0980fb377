"""What an inspection looks at: the config's run as training plans it (utils.plan.plan_run), and a real batch.

The batch comes from the configured data (utils.plan.plan_data, as train() reads it); when the data
cannot be read, random ids of the same shape stand in and the report says so. A user's model file or
Gist is built without the dummy-batch check of utils.models.user_models (the checks here name what that check
would only refuse), and nothing is copied into the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utils.config import WizardConfig
from utils.data import DataError, TokenizerError
from utils.data.spec import vocab_size_for
from utils.models.adapters import count_parameters
from utils.models.build import build_task
from utils.plan import plan_data, plan_run
from utils.plan.run_plan import build_planned_model
from utils.precision import PrecisionDecision

SAMPLE_ROWS = 4  # rows of the real batch the gradient, activation and overfit checks use
ASSUMED_CLASSES = 2  # a classifier's head when the data (and so its labels) cannot be read


@dataclass
class Subject:
    config: WizardConfig
    decision: PrecisionDecision
    model: nn.Module  # where the checks run: the run's device, or run_on
    task: object  # utils.models.tasks' task object: how the kit calls the model and computes the loss
    vocab_size: int
    num_classes: int
    pad_id: int
    batch: tuple  # a real batch of SAMPLE_ROWS rows (or fewer), on the device
    batch_source: str  # where the batch came from, for the report
    tokenizer: object = None  # None when the data could not be read
    max_len: int = 0  # the longest sequence the other checks use: max_seq_len, or less when shapes found less

    def __post_init__(self) -> None:
        self.max_len = self.max_len or self.config.max_seq_len

    def shorten(self, length: int) -> None:
        """Run the remaining checks at sequences of `length` tokens (the model cannot take max_seq_len)."""
        self.max_len = length
        self.batch = tuple(t[:, :length] if t.ndim == 2 else t for t in self.batch)

    @property
    def device(self) -> torch.device:
        """Where the model is: every batch of the checks is made there (never the decision's device as such)."""
        return next(self.model.parameters()).device

    @property
    def is_lm(self) -> bool:
        return self.config.task == "lm"

    def random_batch(self, B: int, T: int, seed: int = 0) -> tuple:
        """Ids in the data's shape (no padding), on the device."""
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (B, T + 1), generator=generator)  # (B, T+1)
        if self.is_lm:
            return ids[:, :-1].to(self.device), ids[:, 1:].to(self.device)
        mask = torch.ones(B, T, dtype=torch.bool)
        labels = torch.arange(B) % self.num_classes
        return ids[:, :-1].to(self.device), mask.to(self.device), labels.to(self.device)

    def describe(self) -> str:
        count = count_parameters(self.model)[1]
        source = {"template": f"template {self.config.model_template!r}", "file": self.config.model_path,
                  "gist": f"Gist {self.config.gist_id}", "pretrained": self.config.pretrained_model}
        return (f"{type(self.model).__name__}, {count / 1e6:.2f}M parameters "
                f"({source[self.config.model_source]}), vocabulary {self.vocab_size}")


def build_subject(config: WizardConfig, decision: PrecisionDecision, run_on: str = "") -> Subject:
    """The config's run as train() plans it (utils.plan.plan_run) and a batch of its data, the model on the run's
    device (or run_on: "cpu" for the wizard on a machine without that GPU); seeded by config.seed."""
    device = torch.device(run_on) if run_on else decision.torch_device()
    data, why = _read_data(config)
    if data is not None:
        plan = plan_run(config, decision, data=data, place_on=device, measure=False, check_user_model=False)
        subject = Subject(config, decision, plan.model, plan.task, plan.vocab_size, plan.num_classes, plan.pad_id,
                          (), "", plan.data.tokenizer)
    else:  # the wizard's answer to "which vocabulary" without data, and a classifier's assumed head
        vocab, _ = vocab_size_for(config)
        classes = ASSUMED_CLASSES if config.task == "classification" else 0
        model, _ = build_planned_model(config, decision, vocab, classes, 0, None, device, check_user_model=False)
        subject = Subject(config, decision, model, build_task(config), vocab, classes, 0, (), "")
    if data is not None and len(data.data.train):
        subject.batch = first_rows(data.data.train, subject.device)
        subject.batch_source = f"{len(subject.batch[0])} sequences of {data.data.source}"
    else:
        subject.batch = subject.random_batch(SAMPLE_ROWS, config.max_seq_len)
        subject.batch_source = f"random ids ({why or 'the data has no training sequences'})"
    return subject


def first_rows(dataset, device: torch.device, n: int = SAMPLE_ROWS) -> tuple:
    """A batch of the dataset's first n items, made as the training loader makes it (chat data pads its own)."""
    rows = [dataset[i] for i in range(min(n, len(dataset)))]
    collate = getattr(dataset, "collate", None)
    batch = collate(rows) if collate else tuple(torch.stack(column) for column in zip(*rows))
    return tuple(t.to(device) for t in batch)


def _read_data(config: WizardConfig):
    """(DataPlan, "") or (None, why it could not be read)."""
    try:
        return plan_data(config), ""
    except (DataError, TokenizerError, OSError) as e:
        return None, f"the data could not be read: {' '.join(str(e).split())[:200]}"

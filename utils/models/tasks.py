"""What differs between language modelling and classification, as small task objects.

A task says how the kit calls a model and scores it: `logits(model, batch)`, `loss(model, batch) ->
(loss, metrics)` (the LightningModule logs each metric as train/NAME and val/NAME), `tokens_in(batch)`,
a `dummy_batch` the model checks run before training, and `epoch_metrics` for validation metrics over the
whole set (val/perplexity, val/macro_f1), which a per-batch average would get wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from utils.models.packing import examples_in, packed_logits
from utils.models.calling import classifier_logits, describe_call, model_logits


class LanguageModelTask:
    """Next-token prediction: the model maps ids (B, T) to logits (B, T, V); targets are pre-shifted."""

    name = "lm"
    output_meaning = "batch, sequence length, vocab_size: one score per vocabulary entry at every position"

    def logits(self, model: nn.Module, batch) -> torch.Tensor:
        if len(batch) == 3:  # packed chat rows (x, y, position_ids), utils.data.packing
            return packed_logits(model, batch)  # (R, L, V)
        x, _ = batch  # (B, T)
        return model_logits(model, x)  # (B, T, V)

    def examples_in(self, batch) -> int:
        """Sequences in the batch (validation averages per sequence): rows, or a packed batch's conversations."""
        return examples_in(batch) if len(batch) == 3 else len(batch[0])

    def describe_call(self, model: nn.Module) -> str:
        """How the kit calls this model, for messages."""
        return describe_call(model, with_mask=False)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.scored(model, batch)[:2]

    def scored(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(loss, per-batch metrics, logits)."""
        y = batch[1]  # (B, T)
        logits = self.logits(model, batch)  # (B, T, V)
        # The default ignore_index (-100) skips chat data's prompt and padding targets (utils.data.chat).
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        return loss, {}, logits

    def epoch_metrics(self, num_outputs: int) -> dict:
        """Validation metrics over the whole validation set (a per-batch average would be wrong for these)."""
        return {"perplexity": Perplexity()}

    def update_epoch_metrics(self, metrics: dict, loss: torch.Tensor, logits: torch.Tensor, batch) -> None:
        metrics["perplexity"].update(loss, weight=batch[1].numel())

    def tokens_in(self, batch) -> torch.Tensor:
        """Tokens read up to each row's last counted target: all of a window of text; a padded chat batch without
        the padding after its last answer. A tensor on the batch's device: counted without a sync."""
        counted = batch[1] != -100  # (B, T)
        return (counted.flip(-1).cumsum(-1) > 0).sum()

    def dummy_batch(self, B: int, T: int, vocab_size: int, num_classes: int = 0) -> tuple[tuple, tuple]:
        """A batch in the data's shape, with the largest id the tokenizer makes, and the logits shape expected."""
        ids = _dummy_ids(B, T, vocab_size)
        return (ids, torch.roll(ids, -1, dims=1)), (B, T, vocab_size)

    def output_fits(self, shape: tuple, expected: tuple) -> bool:
        # More scores than ids is fine (vocabularies padded to a multiple of 64 for speed, as nanoGPT
        # does): those ids are never targets, so the loss is unaffected.
        return len(shape) == 3 and shape[:2] == expected[:2] and shape[2] >= expected[2]

    def describe_data(self, data) -> str:
        return ""

    def summary_lines(self, val_accuracy) -> list[str]:
        return []

    def chance_loss_outputs(self, vocab_size: int, num_classes: int) -> int:
        """How many outputs an untrained model spreads its guess over (its loss is about ln of this)."""
        return vocab_size


class ClassificationTask:
    """Text -> label: the model maps ids (B, T) and a padding mask (B, T) to logits (B, num_classes)."""

    name = "classification"
    output_meaning = "batch, num_classes: one score per class for each sequence"

    def logits(self, model: nn.Module, batch) -> torch.Tensor:
        input_ids, attention_mask, _ = batch  # (B, T) long, (B, T) bool, (B,) long
        return classifier_logits(model, input_ids, attention_mask)  # (B, num_classes)

    def describe_call(self, model: nn.Module) -> str:
        return describe_call(model, with_mask=True)

    def examples_in(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.scored(model, batch)[:2]

    def scored(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        labels = batch[2]  # (B,)
        logits = self.logits(model, batch).float()  # (B, num_classes)
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return F.cross_entropy(logits, labels), {"accuracy": accuracy}, logits

    def epoch_metrics(self, num_outputs: int) -> dict:
        from torchmetrics.classification import MulticlassF1Score

        return {"macro_f1": MulticlassF1Score(num_classes=num_outputs, average="macro", zero_division=0)}

    def update_epoch_metrics(self, metrics: dict, loss: torch.Tensor, logits: torch.Tensor, batch) -> None:
        metrics["macro_f1"].update(logits.argmax(dim=-1), batch[2])

    def tokens_in(self, batch) -> torch.Tensor:
        """Real tokens only: padding is not throughput. A tensor on the batch's device: counted without a sync."""
        return batch[1].sum()

    def dummy_batch(self, B: int, T: int, vocab_size: int, num_classes: int = 2) -> tuple[tuple, tuple]:
        ids = _dummy_ids(B, T, vocab_size)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[1 % B, T // 2:] = False  # the second row is padded
        return (ids, mask, torch.arange(B) % num_classes), (B, num_classes)

    def output_fits(self, shape: tuple, expected: tuple) -> bool:
        return shape == expected

    def describe_data(self, data) -> str:
        return f", {data.num_classes} classes"

    def summary_lines(self, val_accuracy) -> list[str]:
        return [f"val accuracy:     {'n/a' if val_accuracy is None else f'{val_accuracy:.4f}'}"]

    def chance_loss_outputs(self, vocab_size: int, num_classes: int) -> int:
        return num_classes


class Perplexity(MeanMetric):
    """exp of the token-weighted mean loss over all batches: the validation set's perplexity."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def _dummy_ids(B: int, T: int, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(0))  # (B, T)
    ids[0, 0] = vocab_size - 1  # the largest id the tokenizer can produce
    return ids


TASKS = {task.name: task for task in (LanguageModelTask(), ClassificationTask())}

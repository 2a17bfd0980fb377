"""The reference kit's TrainingCoordinator, for code written against it; the kit's own entry is
utils.training.train(config).

    coordinator = TrainingCoordinator(output_dir="runs/ref", use_gpu=True, precision="16")
    results = coordinator.train(model, dataset_path="my_text.txt", max_epochs=3, use_amp=True)
    results["best_model_path"], results["final_metrics"]["val_loss"]

Every argument maps onto a WizardConfig field and the run is utils.training.train's: the same
precision decision, checkpoints, resume and export. An argument of the reference kit that has no
field here (its own DataModule, tokenizer object, Drive backup, ...) is refused by name, never
dropped. Nothing else in the kit imports this module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from torch import nn

from utils.config import WizardConfig
from utils.env import DeviceInfo, detect_device
from utils.training.coordinator import TrainingResult, train
from utils.precision import PrecisionDecision, PrecisionError, resolve_precision

# The reference kit's precision strings -> (use_mixed_precision, WizardConfig.precision)
PRECISIONS = {"32": (False, "auto"), "32-true": (False, "auto"), "16": (True, "16-mixed"),
              "16-mixed": (True, "16-mixed"), "bf16": (True, "bf16-mixed"), "bf16-mixed": (True, "bf16-mixed")}
# train()'s keyword arguments in the reference kit -> WizardConfig fields
TRAIN_FIELDS = {"vocab_size": "vocab_size", "batch_size": "batch_size", "max_length": "max_seq_len",
                "learning_rate": "learning_rate", "max_epochs": "max_epochs", "val_split": "val_split",
                "accumulate_grad_batches": "gradient_accumulation_steps", "save_top_k": "save_top_k",
                "save_every_n_epochs": "checkpoint_every_n_epochs", "seed": "seed"}
CPU = DeviceInfo("cpu", "CPU")


class TrainingCoordinator:
    """TrainingCoordinator(output_dir, use_gpu, precision, gradient_clip_val, strategy, devices, num_nodes).

    output_dir: default config.output_dir when a config is given, else the reference's "./training_output".
    config: the WizardConfig the other settings start from (default WizardConfig()); device: the
    device facts (detected when use_gpu, a CPU otherwise; tests pass a DeviceInfo for a T4 or an A100).
    """

    def __init__(self, output_dir: Optional[str] = None, use_gpu: bool = True, precision: str = "16",
                 gradient_clip_val: float = 1.0, strategy: str = "auto", devices: Optional[int] = None,
                 num_nodes: int = 1, config: Optional[WizardConfig] = None, device: Optional[DeviceInfo] = None):
        if str(precision) not in PRECISIONS:
            raise PrecisionError(f"precision={precision!r} is unknown; choose one of {', '.join(map(repr, PRECISIONS))}")
        if output_dir is None:
            output_dir = config.output_dir if config is not None else "./training_output"
        self.output_dir = Path(output_dir)
        self.use_gpu, self.precision, self.gradient_clip_val = use_gpu, str(precision), gradient_clip_val
        self.strategy, self.devices, self.num_nodes = strategy, devices, num_nodes
        use_mixed, kind = PRECISIONS[self.precision]
        # devices=None is the reference's "auto": every visible GPU, which is the config's 0.
        self.config = (config or WizardConfig()).replace(
            output_dir=str(output_dir), use_mixed_precision=use_mixed, precision=kind,
            gradient_clip_val=gradient_clip_val, strategy=strategy, devices=devices or 0, num_nodes=num_nodes)
        self.device = device or (detect_device() if use_gpu else CPU)

    def resolve_precision(self, use_amp: Optional[bool] = None) -> PrecisionDecision:
        """The kit's one precision decision for a train(use_amp=...) call (see train)."""
        config = self._amp_config(self.config, use_amp)
        return resolve_precision(config.use_mixed_precision, config.precision, self.device)

    def train(self, model: Optional[nn.Module] = None, dataset: Optional[str] = None, dataset_path: Optional[str] = None,
              config_name: Optional[str] = None, early_stopping_patience: Optional[int] = None,
              use_amp: Optional[bool] = None, extra_callbacks: Optional[list] = None, on_change: str = "refuse",
              **settings: Any) -> dict:
        """Train `model` (None: the config's model) and return the reference kit's result keys.

        dataset: a Hugging Face dataset name (config_name its subset); dataset_path: a local .txt/.csv/.jsonl.
        use_amp: None follows `precision`; True turns mixed precision on (with precision '32': the kind the
        kit picks for the device, fp32 on a CPU as in the reference), False off, for this call. The other keywords are TRAIN_FIELDS.
        Returns best_model_path, final_metrics, trainer (None: the kit keeps no Trainer after a run),
        model (the trained nn.Module), checkpoint_manager (None), tokenizer, and `result`, the kit's TrainingResult.
        """
        config = self._amp_config(self._train_config(dataset, dataset_path, config_name, early_stopping_patience,
                                                     settings), use_amp)
        result = train(config, model, self.device, on_change=on_change, extra_callbacks=extra_callbacks)
        return reference_results(result)

    def _train_config(self, dataset, dataset_path, config_name, early_stopping_patience, settings) -> WizardConfig:
        unknown = sorted(set(settings) - set(TRAIN_FIELDS))
        if unknown:
            raise TypeError(f"TrainingCoordinator.train() takes no {', '.join(unknown)} here: the kit reads its data, "
                            f"tokenizer and checkpoints from the config; it takes model, dataset, dataset_path, "
                            f"config_name, early_stopping_patience, use_amp and {', '.join(TRAIN_FIELDS)}")
        changes = {TRAIN_FIELDS[name]: value for name, value in settings.items()}
        if dataset is not None and dataset_path is not None:
            raise ValueError("give dataset (a Hugging Face name) or dataset_path (a local file), not both")
        if dataset is not None:
            changes.update(dataset_source="huggingface", dataset_name=dataset, dataset_config=config_name or "")
        elif dataset_path is not None:
            changes.update(dataset_source="file", dataset_path=str(dataset_path))
        if early_stopping_patience is not None:
            changes["early_stopping_patience"] = early_stopping_patience
        return self.config.replace(**changes)

    @staticmethod
    def _amp_config(config: WizardConfig, use_amp: Optional[bool]) -> WizardConfig:
        if use_amp is None:
            return config
        if use_amp and not config.use_mixed_precision:  # precision '32' asked for no kind: the device decides
            return config.replace(use_mixed_precision=True, precision="auto")
        return config.replace(use_mixed_precision=use_amp)


def reference_results(result: TrainingResult) -> dict:
    """The reference kit's result dict for one of the kit's runs."""
    metrics = {"train_loss": result.train_loss, "val_loss": result.val_loss}
    if result.val_loss is not None:
        metrics["val_perplexity"] = math.exp(min(result.val_loss, 20.0))  # as the reference prints it
    if result.val_accuracy is not None:
        metrics["val_accuracy"] = result.val_accuracy
    best = result.best_checkpoint or result.last_checkpoint
    return {"best_model_path": str(best) if best else "", "final_metrics": metrics, "trainer": None,
            "model": result.model, "checkpoint_manager": None, "tokenizer": result.tokenizer, "result": result}

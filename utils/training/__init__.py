"""The one training core: WizardConfig in, trained model, checkpoints and metrics out.

From a notebook:  from utils.training import train;  result = train(config)
From a terminal:  python -m utils.training [--config FILE.json] [--set key=value ...]
"""

from utils.training.coordinator import TrainingCoordinator, TrainingResult, sample_text, train

__all__ = ["TrainingCoordinator", "TrainingResult", "sample_text", "train"]

"""The one training core: WizardConfig in, trained model, checkpoints and metrics out.

From a notebook:  from utils.training import train;  result = train(config)
From a terminal:  python -m utils.training [--config FILE.json] [--set key=value ...]
                  (and estimate / export / generate / predict: see utils.cli)
"""

__all__ = ["TrainingCoordinator", "TrainingResult", "sample_text", "train"]


def __getattr__(name: str):
    # Imported on first use: `python -m utils.training` imports this package first, and Lightning
    # takes seconds to load, so the command line checks its settings before paying for it.
    if name == "TrainingCoordinator":  # the reference kit's entry (utils.training.training_core)
        from utils.training import training_core

        return training_core.TrainingCoordinator
    if name in __all__:
        from utils.training import coordinator

        return getattr(coordinator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

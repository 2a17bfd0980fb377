"""SetupWizard: an ipywidgets wizard that yields a valid WizardConfig (built in issue 3)."""

from utils.config import WizardConfig

__all__ = ["WizardConfig"]

"""The setup wizard (ipywidgets) that produces a WizardConfig."""

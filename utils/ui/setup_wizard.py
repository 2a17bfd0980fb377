"""SetupWizard: click through five steps in Colab or Jupyter and get a valid WizardConfig.

    wizard = SetupWizard(config_path="/content/drive/MyDrive/kit/wizard_config.json")
    wizard              # a cell ending in `wizard` shows it; later cells read wizard.config

`wizard.config` is a valid WizardConfig at all times: the saved file when there is one, else the
preset, else the defaults, then every valid change. Save writes it to `config_path`, and the next
SetupWizard starts from that file, so Run all keeps the choices. Works with ipywidgets 7.7 (Colab)
and 8.x: no Tab widget, no custom widget manager.

Interactive or headless (`interactive=None`): headless when the CI environment variable is set,
when no Jupyter kernel runs this code (a script, pytest), or when the cell was sent by a client
that cannot answer a prompt (nbclient, nbval and papermill execute with allow_stdin=False; every
browser frontend allows it). Colab is always interactive. Headless, the wizard prints its config
instead of showing widgets. It never waits in either mode.
"""

from __future__ import annotations

import html
import os
import traceback
from functools import wraps
from pathlib import Path
from typing import Callable, Optional

import ipywidgets as widgets
import torch

from templates import TEMPLATES
from utils.config import EMBEDDED_CORPUS_WORDS, EMBEDDED_DATASETS, SETTINGS, ConfigError, WizardConfig
from utils.data.spec import vocab_size_for
from utils.env import DeviceInfo, detect_device, in_colab
from utils.models.adapters import suggested_models
from utils.training.estimate import BatchTooLargeError, estimate_config
from utils.precision import PrecisionError, resolve_precision
from utils.ui.fields import (ERROR_COLOR, LABEL_WIDTH, PATH_WIDTH, SUCCESS_COLOR, UPLOAD_LIMIT_TEXT, WARNING_COLOR,
                             Field, build_field, save_upload, upload_problem, uploaded_files)
from utils.ui.model_check import count_parameters, describe_check, measure_model
from utils.ui.notes import model_note, note, plan_html, precision_text, same_run
from utils.ui.presets import PRESET_WORDS, PRESETS, apply_preset, preset_hint
from utils.ui.review import value_words
from utils.ui.steps import (FIELD_WORDS, HF_AVAILABLE, MULTI_DEVICE_FIELDS, PLACEHOLDERS, STEPS, Step, corpus_title,
                            indicator_html)

__all__ = ["SetupWizard", "WizardConfig", "validate_config", "detect_interactive", "PRESETS"]


def validate_config(config: WizardConfig) -> list[tuple[str, str]]:
    """(field, message) for every problem, empty when valid: WizardConfig's own rules, nothing else."""
    return config.errors()


def detect_interactive() -> tuple[bool, str]:
    """Whether a person can click the wizard here, and why (the rule is in the module docstring)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False, "the CI environment variable is set"
    from IPython import get_ipython  # IPython comes with ipywidgets

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False, "no Jupyter kernel runs this code"
    if in_colab():
        return True, "running in Colab"
    if not getattr(kernel, "_allow_stdin", True):
        return False, "the notebook is executed by a client that cannot prompt (nbclient, nbval or papermill)"
    return True, "running in a Jupyter kernel with a frontend"


class SetupWizard:
    def __init__(self, config_path: str | os.PathLike = "runs/wizard_config.json", interactive: Optional[bool] = None,
                 preset: Optional[str] = None, device: Optional[DeviceInfo] = None,
                 run_root: Optional[str | os.PathLike] = None, device_count: Optional[int] = None):
        self.config_path = Path(config_path)
        self.run_root = Path(run_root) if run_root is not None else Path.cwd()  # a relative output_dir is under it
        self.device = device or detect_device()
        # GPUs visible here (tests pass their own): the multi-device settings matter only with several
        self.device_count = device_count if device_count is not None else (
            torch.cuda.device_count() if self.device.kind == "cuda" else 1)
        self._decisions: dict = {}  # (use_mixed_precision, precision) -> PrecisionDecision or PrecisionError
        if interactive is None:
            self.interactive, self.mode_reason = detect_interactive()
        else:
            self.interactive, self.mode_reason = interactive, f"interactive={interactive} was passed"
        self._config, self.start_message = self._initial_config(preset)
        self.step = 0
        self.errors: dict[str, str] = {}  # field -> message for the values in the widgets now
        self.last_check = None  # (config the model check ran on, its ModelCheck)
        self._syncing = False
        self._saved: Optional[WizardConfig] = None  # what the last Save wrote, to flag later edits
        self._param_counts: dict[tuple, int] = {}
        self._build_widgets()
        self._set_widgets(self._config)
        self._say(self.start_message, kind="error" if self.start_message.startswith("Could not") else "info")

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> WizardConfig:
        """The last valid config (never raises; values with errors are not taken)."""
        return self._config

    @property
    def widget(self) -> widgets.VBox:
        return self._root

    def show(self) -> None:
        from IPython.display import display

        if self.interactive:
            # The Output widget is displayed apart from the wizard: where it fails to render (classic
            # Notebook 6 with widgetsnbextension 3.6.10), the wizard itself still shows.
            display(self._root)
            display(self.output)
        else:
            print(self.describe())

    def _ipython_display_(self) -> None:
        # Called by IPython 7-9 for a cell ending in `wizard`, under ipywidgets 7.7 and 8 alike.
        self.show()

    def save(self) -> Path:
        """Write wizard.config to config_path (atomically) and return the path."""
        path = self._config.save(self.config_path)
        self._saved = self._config
        self._say(f"Saved to {path}. Run the next cells; a new wizard starts from this file.")
        return path

    def apply_preset(self, name: str) -> WizardConfig:
        """Change the current config by a preset's fields and show the result in the widgets."""
        self._config = apply_preset(self._config, name)
        self._set_widgets(self._config)
        changes = ", ".join(f"{SETTINGS[k].label} {value_words(k, v)}" for k, v in PRESETS[name].items())
        hint = preset_hint(name, self.device)
        self._say(f"Applied preset {name!r}: {changes}." + (f" {hint}" if hint else ""),
                  kind="warning" if hint else "info")
        return self._config

    # The reference kit's two methods, for code written against it.
    def validate_config(self, config: WizardConfig) -> tuple[bool, list[str]]:
        """(ok, the error messages): WizardConfig's own rules, nothing else."""
        messages = [message for _, message in config.errors()]
        return not messages, messages

    def create_config_from_preset(self, name: str) -> WizardConfig:
        """The defaults with the preset's fields changed (the wizard's own choices are not used)."""
        return apply_preset(WizardConfig(), name)

    def describe(self) -> str:
        """Plain text for headless runs: why no widgets, where the config came from, what it is."""
        lines = [f"Setup wizard not shown ({self.mode_reason}). {self.start_message}",
                 f"Precision: {self._precision_text(self._config)}"]
        values = self._config.to_dict()
        lines += [f"  {name} = {values[name]!r}" for name in self._config.relevant_names()]
        return "\n".join(lines)

    # ------------------------------------------------------------------ start-up
    def _initial_config(self, preset: Optional[str]) -> tuple[WizardConfig, str]:
        base = apply_preset(WizardConfig(), preset) if preset else WizardConfig()
        origin = f"preset {preset!r}" if preset else "the defaults"
        if not self.config_path.exists():
            return base, f"Started from {origin}."
        try:
            return WizardConfig.load(self.config_path), f"Loaded your saved choices from {self.config_path}."
        except (ConfigError, OSError, UnicodeDecodeError) as e:
            return base, (f"Could not use the saved config {self.config_path}: {e} Started from {origin}; "
                          "the file stays as it is until you press Save.")

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        self.output = widgets.Output()  # callback errors land here, never in the void
        self.fields: dict[str, Field] = {}
        for step in STEPS:
            for name, _ in step.fields:
                self.fields[name] = build_field(name, self._options(name), PLACEHOLDERS.get(name, ""),
                                                words=FIELD_WORDS.get(name), suggestions=self._suggestions(name))
                self.fields[name].input.observe(self._guard(self._on_field_change), names="value")
        # The built-in corpus from a menu; dataset_name's text box is for a Hugging Face name.
        # Short options (the menu is as wide as a text box): the title; what it holds goes in the help line.
        label, corpus_help = EMBEDDED_CORPUS_WORDS
        corpus_help += "".join(f". {words}" for words in EMBEDDED_DATASETS.values())
        self.corpus = build_field("dataset_name", [(corpus_title(name), name) for name in EMBEDDED_DATASETS],
                                  words=(label, corpus_help), key="embedded_corpus")
        self.corpus.input.observe(self._guard(self._on_field_change), names="value")
        self._build_controls()
        self._step_boxes = [self._step_box(step) for step in STEPS]
        self._body = widgets.VBox([self._step_boxes[0]])
        navigation = widgets.HBox([self.back_button, self.next_button, self.save_button])
        self._root = widgets.VBox([self._title, self.preset_menu, self.indicator, self._body, navigation,
                                   self.message],
                                  layout=widgets.Layout(width="100%", max_width="1000px", border="1px solid #ccc",
                                                        padding="8px"))
        self._root.add_class("wizard")

    def _suggestions(self, name: str) -> Optional[list[str]]:
        """Open chat models that fine-tune on this device, offered in the pretrained model's field."""
        if name != "pretrained_model":
            return None
        return suggested_models(self.device.total_memory_bytes, self.device.kind)

    def _options(self, name: str) -> Optional[list[tuple[str, str]]]:
        """(label, value) pairs where the wizard offers other than all of a field's choices, else None."""
        if name == "dataset_source":
            choices = SETTINGS[name].choices
            return [(label, value) for value, label in choices.items() if value != "huggingface" or HF_AVAILABLE]
        if name == "model_template":  # every template: one for another task shows the config's own message
            return [(f"{template} — {info.description}", template) for template, info in TEMPLATES.items()]
        return None

    def _build_controls(self) -> None:
        self._title = widgets.HTML("<b>Setup wizard</b>: choose data, tokenizer, model and training, then Save.")
        self.preset_menu = widgets.Dropdown(options=[("choose a preset", "")] + [(f"{n} — {PRESET_WORDS[n]}", n)
                                                                                 for n in PRESETS],
                                            description="Preset", style={"description_width": LABEL_WIDTH},
                                            layout=widgets.Layout(width=PATH_WIDTH, max_width="100%"))
        self.preset_menu.add_class("wizard-preset")
        self.preset_menu.observe(self._guard(self._on_preset), names="value")
        self.indicator = widgets.HTML()
        self.back_button = self._button("Back", "wizard-back", self._on_back)
        self.next_button = self._button("Next", "wizard-next", self._on_next, style="primary")
        self.save_button = self._button("Save", "wizard-save", self._on_save, style="success")
        self.check_button = self._button("Check model", "wizard-check", self._on_check)
        self.estimate_button = self._button("Estimate time", "wizard-estimate", self._on_estimate)
        self.inspect_button = self._button("Inspect model", "wizard-inspect", self._on_inspect)
        self.inspect_plots = widgets.VBox()  # the inspection's pictures, as Image widgets
        self.last_inspection = None  # (config it ran on, its InspectionReport)
        self.last_estimate = None  # (config the estimate ran on, its Estimate)
        self.upload = widgets.FileUpload(accept=".txt,.csv,.jsonl", multiple=False, description="Upload file")
        self.upload.add_class("wizard-upload")
        self.upload.observe(self._guard(self._on_upload), names="value")
        self.upload_limit = widgets.HTML(note(html.escape(UPLOAD_LIMIT_TEXT)))
        self.upload_limit.add_class("wizard-upload-limit")
        self.message = widgets.HTML()
        self._message_text = ""  # what the message says, as plain text
        self.message.add_class("wizard-message")
        self.notes = {key: widgets.HTML(layout=widgets.Layout(width="100%"))
                      for key in ("dataset", "tokenizer", "model", "check", "inspect", "precision", "summary",
                                  "estimate")}
        for key, widget in self.notes.items():
            widget.add_class(f"wizard-note-{key}")

    def _button(self, text: str, css: str, handler: Callable, style: str = "") -> widgets.Button:
        button = widgets.Button(description=text, button_style=style)
        button.add_class(css)
        button.on_click(self._guard(handler))
        return button

    def _step_box(self, step: Step) -> widgets.VBox:
        rows = [self.fields[name].row for name, _ in step.fields]
        if step.key == "dataset":
            rows.insert(rows.index(self.fields["dataset_name"].row), self.corpus.row)
            # The Upload button where the choice was made, not below the fields that follow it.
            at = rows.index(self.fields["dataset_source"].row) + 1
            rows[at:at] = [self.upload, self.upload_limit, self.notes["dataset"]]
        extras = {"dataset": [], "tokenizer": [self.notes["tokenizer"]],
                  "model": [self.notes["model"], self.check_button, self.notes["check"], self.inspect_button,
                            self.notes["inspect"], self.inspect_plots],
                  "training": [self.notes["precision"]],
                  "review": [self.notes["summary"], self.estimate_button, self.notes["estimate"]]}
        box = widgets.VBox(rows + extras[step.key])
        box.add_class(f"wizard-step-{step.key}")
        return box

    def _guard(self, handler: Callable) -> Callable:
        """Show a callback's unexpected error in the Output widget; widget events would hide it."""
        @wraps(handler)
        def run(*args):
            try:
                handler(*args)
            except Exception as e:  # boundary: any bug in a callback must reach the user's eyes
                self.output.append_stderr("".join(traceback.format_exception(type(e), e, e.__traceback__)))
                self._say(f"Internal error in {handler.__name__}: {e} (traceback below).", kind="error")
        return run

    # ------------------------------------------------------------------ events
    def _on_field_change(self, change) -> None:
        if not self._syncing:
            self._refresh()

    def _on_preset(self, change) -> None:
        if change["new"] and not self._syncing:
            self.apply_preset(change["new"])
            self._syncing = True
            self.preset_menu.value = ""  # the menu is an action, so edits after it do not look preset
            self._syncing = False

    def _on_back(self, button) -> None:
        self._go(self.step - 1)

    def _on_next(self, button) -> None:
        if not self._step_errors(self.step):
            self._go(self.step + 1)

    def _on_save(self, button) -> None:
        try:
            self.save()
        except OSError as e:  # a dropped Drive mount, a read-only folder
            self._say(f"Could not save to {self.config_path}: {e}", kind="error")

    def _on_check(self, button) -> None:
        decision = self._decision(self._config)
        if isinstance(decision, PrecisionError):  # a saved precision this device cannot run
            self.notes["check"].value = note(html.escape(f"No model check: {decision}"), ERROR_COLOR)
            return
        self.notes["check"].value = note("<i>Running a forward/backward pass on CPU...</i>")
        try:
            check = measure_model(self._config, decision)
        except (ValueError, RuntimeError) as e:  # the model's own complaint (shapes, memory): show it
            self.notes["check"].value = note(html.escape(f"Model check failed: {e}"), ERROR_COLOR)
            return
        self.last_check = (self._config, check)
        self.notes["check"].value = note("<br>".join(map(html.escape, describe_check(check, self._config,
                                                                                     decision).splitlines())))

    def _on_inspect(self, button) -> None:
        """Every check of utils.inspection, its lines and plots shown here; on this machine's GPU or CPU."""
        from utils.inspection import inspect_model
        from utils.inspection.view import plot_images, report_html

        self.notes["inspect"].value = note("<i>Inspecting: building the model and a batch of the data, then "
                                           "running ten checks...</i>")
        self.inspect_plots.children = ()
        run_on = "cuda" if self.device.kind == "cuda" and torch.cuda.is_available() else "cpu"
        try:
            report = inspect_model(self._placed(self._config), self.device, run_on=run_on)
        except (ValueError, RuntimeError, OSError) as e:  # the data's or the model's own complaint: show it
            self.notes["inspect"].value = note(html.escape(f"Inspection failed: {e}"), ERROR_COLOR)
            return
        self.last_inspection = (self._config, report)
        self.notes["inspect"].value = report_html(report)
        self.inspect_plots.children = tuple(plot_images(report))

    def _on_estimate(self, button) -> None:
        """Time a few training steps of this config on this device (utils.training.estimate)."""
        decision = self._decision(self._config)
        if isinstance(decision, PrecisionError):
            self.notes["estimate"].value = note(html.escape(f"No estimate: {decision}"), ERROR_COLOR)
            return
        self.notes["estimate"].value = note("<i>Preparing the data and timing a few training steps...</i>")
        try:
            # A batch too large for the device is refused with the batch that fits, as training refuses it:
            # timing even the largest that fits could fill a Colab CPU runtime's memory and end the session.
            estimate = estimate_config(self._placed(self._config), decision, refuse_oversize=True)
        except BatchTooLargeError as e:
            self.notes["estimate"].value = note(html.escape(f"No estimate: {e}"), ERROR_COLOR)
            return
        except (ValueError, RuntimeError, OSError) as e:  # the data or the model's own complaint: show it
            self.notes["estimate"].value = note(html.escape(f"Estimate failed: {e}"), ERROR_COLOR)
            return
        self.last_estimate = (self._config, estimate)
        self.notes["estimate"].value = note("<br>".join(map(html.escape, estimate.describe().splitlines())))

    def _on_upload(self, change) -> None:
        files = uploaded_files(change["new"])
        if not files:
            return
        name, content = files[-1]
        problem = upload_problem(name, content)
        if problem:
            self._say(problem, kind="error")
            return
        try:
            # Beside the saved config (the workspace, on Drive when it is on), as an absolute path:
            # a relative one would follow the kernel's working folder, lost with the runtime.
            path = save_upload(name, content, self.config_path.resolve().parent / "uploads")
        except (OSError, ValueError) as e:
            self._say(f"Could not save the upload {name!r}: {e}", kind="error")
            return
        self._set_widgets(self._config, dataset_source="upload", dataset_path=str(path))
        self._say(f"Uploaded {name} ({len(content)} bytes) to {path}.")

    # ------------------------------------------------------------------ state
    def _set_widgets(self, config: WizardConfig, **overrides) -> None:
        """Show config (plus overrides) in the widgets, then validate once."""
        values = {**config.to_dict(), **overrides}
        embedded = values["dataset_source"] == "embedded"
        self._syncing = True
        try:
            for name, field in self.fields.items():
                field.set_value(values[name])
            if embedded or values["dataset_name"] in EMBEDDED_DATASETS:
                self.corpus.set_value(values["dataset_name"])
            if embedded:  # the text box is for a Hugging Face name: it starts empty, not with the corpus's name
                self.fields["dataset_name"].set_value("")
        finally:
            self._syncing = False
        self._refresh()

    def _candidate(self) -> WizardConfig:
        """The config the widgets show, with the fields its choices make irrelevant at their defaults.

        The dataclass constructor does not validate, so a candidate can hold bad values to report.
        """
        values = {n: f.value for n, f in self.fields.items()}
        if values["dataset_source"] == "embedded":
            values["dataset_name"] = self.corpus.value
        return WizardConfig(**{**self._config.to_dict(), **values}).relevant()

    def _validate(self, candidate: WizardConfig) -> dict[str, str]:
        problems = validate_config(candidate)
        if not any(name in ("precision", "use_mixed_precision") for name, _ in problems):
            decision = self._decision(candidate)
            if isinstance(decision, PrecisionError):  # bf16 on a T4: valid config, wrong hardware
                problems.append(("precision", f"{SETTINGS['precision'].label}: {decision}"))
        errors: dict[str, str] = {}
        for name, message in problems:
            errors[name] = f"{errors[name]} {message}" if name in errors else message
        return errors

    def _refresh(self) -> None:
        """Validate the widget values, show each error under its field, keep the config if valid.

        Only fields the current choices use are shown and checked (the config's own rule), so a bad
        value left in a field that a later choice hid neither shows nor blocks Next.
        """
        candidate = self._candidate()
        self.errors = self._validate(candidate)
        relevant = set(candidate.relevant_names())
        for name, field in self.fields.items():
            field.show_error(self.errors.get(name, ""))
            shown = name in relevant and (self.device_count > 1 or name not in MULTI_DEVICE_FIELDS)
            if name == "dataset_name":
                shown = shown and candidate.dataset_source == "huggingface"
            # A multi-device field with an error (from a saved file) stays in view, or Next would be
            # disabled for no visible reason.
            field.set_visible(name in self.errors or shown)
        self.corpus.set_visible(candidate.dataset_source == "embedded")
        orphans = [message for name, message in self.errors.items() if name not in self.fields]
        if orphans:  # a field the wizard has no widget for (edited in the JSON file)
            self._say(" ".join(orphans), kind="error")
        self.upload.layout.display = None if candidate.dataset_source == "upload" else "none"
        self.upload_limit.layout.display = self.upload.layout.display
        self._show_upload_state(candidate)
        if not self.errors:
            self._config = candidate
        if self._saved is not None and self._config != self._saved:
            self._saved = None  # say it once: Run all would start from the file, not from these edits
            self._say(f"Changed since the last Save: press Save again to keep these choices in {self.config_path}.",
                      kind="warning")
        self._update_notes(candidate)
        self._update_navigation()

    def _show_upload_state(self, candidate: WizardConfig) -> None:
        """With Upload chosen and nothing uploaded yet, the empty File path is not an error to fix by typing:
        its field waits hidden and the note under the button says what to do (Next stays disabled)."""
        waiting = candidate.dataset_source == "upload" and not candidate.dataset_path.strip()
        if waiting:
            self.fields["dataset_path"].set_visible(False)
        self.notes["dataset"].value = note("Press <b>Upload file</b> to choose a .txt, .csv or .jsonl file; Next "
                                           "waits for it.", WARNING_COLOR) if waiting else ""

    def _step_errors(self, index: int) -> dict[str, str]:
        names = {name for name, _ in STEPS[index].fields}
        return {k: v for k, v in self.errors.items() if k in names}

    def _go(self, index: int) -> None:
        if self.message.value and self._message_text == self.start_message:
            self._say("")  # "Started from the defaults." was news on the first step, not under every one
        self.step = max(0, min(index, len(STEPS) - 1))
        self._body.children = [self._step_boxes[self.step]]
        self._update_notes(self._candidate())  # the review's plan is worked out when it is shown
        self._update_navigation()

    def _update_navigation(self) -> None:
        last = self.step == len(STEPS) - 1
        self.back_button.disabled = self.step == 0
        self.next_button.disabled = last or bool(self._step_errors(self.step))
        self.next_button.layout.display = "none" if last else None
        self.save_button.layout.display = None if last else "none"
        # Errors in fields without a widget (or on an earlier step) would be lost by saving.
        self.save_button.disabled = bool(self.errors)
        self.indicator.value = indicator_html(self.step, self.errors)

    def _say(self, text: str, kind: str = "info") -> None:
        """The message under the buttons: info in green, a warning in amber, an error in red."""
        color = {"info": SUCCESS_COLOR, "warning": WARNING_COLOR, "error": ERROR_COLOR}[kind]
        self._message_text = text
        self.message.value = note(html.escape(text), color) if text else ""

    # ------------------------------------------------------------------ notes beside the fields
    def _update_notes(self, candidate: WizardConfig) -> None:
        """Notes on what the fields on screen now choose; a step with an error says to fix it first."""
        bad_step = {step.key for index, step in enumerate(STEPS) if self._step_errors(index)}
        if "dataset" in bad_step or "tokenizer" in bad_step:
            vocab = None
            self.notes["tokenizer"].value = note("<i>Fix the fields marked above to see how many token ids the "
                                                 "model will see.</i>")
        else:
            vocab, origin = vocab_size_for(candidate)
            self.notes["tokenizer"].value = note(f"The model will see {vocab:,} token ids ({html.escape(origin)}).")
        blocked = vocab is None or "model" in bad_step
        self.notes["model"].value = note("<i>Fix the fields marked on this and the earlier steps to see the "
                                         "model's size.</i>") if blocked else note(self._model_note(candidate, vocab))
        self.check_button.disabled = blocked or candidate.model_source != "template"
        self.notes["precision"].value = "" if "precision" in self.errors else \
            note(f"<b>Precision on this device:</b> {html.escape(self._precision_text(candidate))}")
        if self.step == len(STEPS) - 1:  # the plan may prepare the data: only while the review is shown
            self.notes["summary"].value = self._plan_html(candidate, vocab)
        if self.last_estimate and not same_run(self.last_estimate[0], candidate):
            self.notes["estimate"].value = note("<i>Settings changed since the last estimate: press Estimate time "
                                                "again.</i>")
        if self.last_check and not same_run(self.last_check[0], candidate):
            self.notes["check"].value = note("<i>Settings changed since the last check: press Check model "
                                             "again.</i>")
        if self.last_inspection and not same_run(self.last_inspection[0], candidate):
            self.notes["inspect"].value = note("<i>Settings changed since the last inspection: press Inspect "
                                               "model again.</i>")
            self.inspect_plots.children = ()

    def _plan_html(self, candidate: WizardConfig, vocab: Optional[int]) -> str:
        parameters = self._parameters(candidate, vocab) if not self.errors and candidate.model_source == "template" \
            else None
        return plan_html(self.errors, candidate, self._placed(candidate), vocab, parameters,
                         self._precision_text(candidate))

    def _model_note(self, config: WizardConfig, vocab: int) -> str:
        parameters = self._parameters(config, vocab) if config.model_source == "template" else None
        return model_note(config, vocab, parameters, self.device)

    def _precision_text(self, config: WizardConfig) -> str:
        inspected = self.last_inspection and self.last_inspection[0] == config
        return precision_text(self._decision(config), self.last_inspection[1].check("fp16") if inspected else None)

    def _parameters(self, config: WizardConfig, vocab: int) -> int:
        key = (config.model_template, config.model_size, config.max_seq_len, vocab, config.task)
        if key not in self._param_counts:
            self._param_counts[key] = count_parameters(config, vocab)
        return self._param_counts[key]

    def _placed(self, config: WizardConfig) -> WizardConfig:
        if Path(config.output_dir).is_absolute():
            return config
        return config.replace(output_dir=str(self.run_root / config.output_dir))

    def _decision(self, config: WizardConfig):
        """The one precision decision for these choices on this device (or its PrecisionError), made once per choice."""
        key = (config.use_mixed_precision, config.precision)
        if key not in self._decisions:
            try:
                self._decisions[key] = resolve_precision(*key, self.device)
            except PrecisionError as e:
                self._decisions[key] = e
        return self._decisions[key]

"""Field widgets for the setup wizard: one input per WizardConfig field, its error shown beside it.

The label, the grey help line under the input and a dropdown's choice labels are the field's own
words from its metadata (utils.config.SETTINGS); a dropdown's values stay the config's values.

Only widgets and traits that ipywidgets 7.7 (Colab) and 8.x share are used here.
"""

from __future__ import annotations

import html
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import ipywidgets as widgets

from utils.config import SETTINGS, WizardConfig

LABEL_WIDTH = "170px"
INPUT_WIDTH = "400px"
PATH_WIDTH = "640px"  # Drive paths are long, and so are the choice labels
ERROR_COLOR = "#b00020"
WARNING_COLOR = "#8a4b00"  # amber: something to act on that is not an error ("changed since the last Save")
SUCCESS_COLOR = "#1b5e20"
HELP_COLOR = "#666"
# Our HTML sets its own wrapping: ipywidgets 7's HTML widget does not wrap (white-space: nowrap) and
# clips what does not fit, so a long message at a narrow window would be cut off.
WRAP = "white-space:normal; overflow-wrap:anywhere"
INDENT = f"padding-left:calc({LABEL_WIDTH} + 8px)"  # lines up with the inputs, under their labels


@dataclass
class Field:
    """The input widget for one WizardConfig field, the label that shows its error, its help line, and their row."""

    name: str
    input: widgets.ValueWidget
    error: widgets.HTML
    help: widgets.HTML  # the field's help line, under the input
    row: widgets.Box
    message: str = ""  # the error shown beside the input, "" when the value is fine

    @property
    def value(self) -> Any:
        return self.input.value

    def set_value(self, value: Any) -> None:
        if isinstance(self.input, widgets.Dropdown) and value not in _option_values(self.input.options):
            # A saved config may hold a choice this wizard does not offer (say, a Hugging Face
            # dataset where that library is missing); keep it rather than silently change it.
            self.input.options = list(self.input.options) + [(str(value), value)]
        self.input.value = value

    def show_error(self, message: str) -> None:
        self.message = message
        self.error.value = (f'<div class="wizard-error-text" style="color:{ERROR_COLOR}; {WRAP}; {INDENT}; '
                            f'line-height:1.35">{html.escape(message)}</div>') if message else ""
        self.error.layout.display = None if message else "none"  # no empty line under a valid field

    def set_visible(self, visible: bool) -> None:
        self.row.layout.display = None if visible else "none"


def build_field(name: str, options: Optional[Sequence[tuple[str, Any]]] = None, placeholder: str = "",
                words: Optional[tuple[str, str]] = None, key: str = "",
                suggestions: Optional[Sequence[str]] = None) -> Field:
    """A widget for the named field, chosen by the field's type, or a Dropdown of (label, value) options.

    Without options, a field with choices offers all of them, each under its label. words: (label, help)
    in place of the field's own, for a second widget of the same field; key: its CSS name (default: name).
    suggestions: values a text field offers in a drop-down list while any other text is still accepted.
    The row is the input, its error message under it (wrapping, shown only when there is one), then its
    help line; the input keeps its width whatever the message's length.
    """
    base = _field_type(name)  # first: an unknown name is a KeyError that says so
    setting = SETTINGS[name]
    label, help_text = words or (setting.label, setting.help)
    key = key or name
    if options is None and setting.choices:
        options = [(label, value) for value, label in setting.choices.items()]
    width = PATH_WIDTH if name.endswith(("_path", "_dir")) or options is not None else INPUT_WIDTH
    common = dict(description=label, style={"description_width": LABEL_WIDTH},
                  layout=widgets.Layout(width=width, max_width="100%", flex="0 0 auto"))
    if options is not None:
        widget = widgets.Dropdown(options=list(options), **common)
    elif base is bool:
        widget = widgets.Checkbox(indent=True, **common)
    elif base is int:
        widget = widgets.IntText(continuous_update=True, **common)
    elif base is float:
        widget = widgets.FloatText(continuous_update=True, **common)
    elif suggestions:
        widget = widgets.Combobox(options=list(suggestions), ensure_option=False, continuous_update=True,
                                  placeholder=placeholder, **common)
    else:
        widget = widgets.Text(continuous_update=True, placeholder=placeholder, **common)
    widget.add_class(f"wizard-field-{key}")  # stable hooks for the browser test and for styling
    error = widgets.HTML(value="", layout=widgets.Layout(width="100%", display="none"))
    error.add_class(f"wizard-error-{key}")
    # Plain HTML under the input, lined up with it: it reads the same in ipywidgets 7.7 and 8.
    text = help_text[:1].upper() + help_text[1:]
    help_line = widgets.HTML(f'<div style="color:{HELP_COLOR}; font-size:12px; line-height:1.3; {WRAP}; '
                             f'{INDENT}">{html.escape(text)}</div>', layout=widgets.Layout(width="100%"))
    help_line.add_class(f"wizard-help-{key}")
    row = widgets.VBox([widget, error, help_line], layout=widgets.Layout(width="100%", margin="0 0 6px 0"))
    row.add_class(f"wizard-row-{key}")
    return Field(name, widget, error, help_line, row)


def _field_type(name: str) -> type:
    hints = typing.get_type_hints(WizardConfig)
    if name not in {f.name for f in fields(WizardConfig)}:
        raise KeyError(f"{name!r} is not a WizardConfig field")
    hint = hints[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _option_values(options: Sequence) -> list:
    return [o[1] if isinstance(o, tuple) else o for o in options]


# Colab's FileUpload is reported to deliver files of about a megabyte or more with empty content
# (ipywidgets #3452), so the wizard takes uploads up to this size and sends larger files to Drive.
UPLOAD_LIMIT_BYTES = 1_000_000
UPLOAD_LIMIT_TEXT = (f"Uploads up to {UPLOAD_LIMIT_BYTES // 1_000_000} MB: Colab's upload button delivers larger "
                     "files empty. For a larger file put it on Google Drive (or anywhere on this machine) and "
                     "choose the source 'file' with its path, e.g. /content/drive/MyDrive/data/train.txt.")


def upload_problem(name: str, content: bytes) -> str:
    """Why an upload cannot be used (empty, or over UPLOAD_LIMIT_BYTES), pointing to Drive; "" when it can."""
    if not content:
        return (f"The upload {name!r} arrived empty. Colab's upload button delivers files of about 1 MB or more "
                "with no content; put a large file on Google Drive and choose the source 'file' with its path "
                "(e.g. /content/drive/MyDrive/data/train.txt).")
    if len(content) > UPLOAD_LIMIT_BYTES:
        return (f"The upload {name!r} is {len(content):,} bytes, over the {UPLOAD_LIMIT_BYTES:,}-byte limit for "
                "uploads (Colab's upload button delivers larger files empty). Put it on Google Drive and choose "
                "the source 'file' with its path (e.g. /content/drive/MyDrive/data/train.txt).")
    return ""


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """(file name, content) pairs from FileUpload.value in either ipywidgets version."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": {...}, "content": bytes}}
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]  # 8: tuple of {"name", "content", ...}


def save_upload(name: str, content: bytes, folder: Path) -> Path:
    """Write an uploaded file into folder, keeping only its base name so it cannot land elsewhere."""
    safe_name = Path(name).name
    if not safe_name or safe_name in (".", ".."):
        raise ValueError(f"uploaded file name {name!r} is not a usable file name")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe_name
    path.write_bytes(content)
    return path

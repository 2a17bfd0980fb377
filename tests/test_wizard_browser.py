"""The setup wizard in a real browser, in both frontends it meets: JupyterLab 4 with ipywidgets 8, and
classic Notebook 6 with ipywidgets 7.7.1 (Colab's version). Playwright drives Debian's Chromium.

Which frontend runs follows the ipywidgets installed (one environment holds one ipywidgets): 8 runs
JupyterLab (the README's test command), 7 runs classic Notebook 6 (.ci/run's second phase installs
ipywidgets 7.7.1 and notebook<7). The other variant is skipped and says where it runs.

On every step the test enters one invalid value, checks that its message appears and that Next (Save
on the last step) is disabled, then fixes it and goes on; it saves and checks the saved file. The
window is 900 px wide, and at every stop each visible message must be fully visible: not clipped,
inside the window and inside the cell's output area. Screenshots of every step, invalid and valid, go
to test-artifacts/wizard/<frontend>/step-<n>-<key>[-invalid].png.

Then train.ipynb as shipped gets Run all from the frontend's menu (CI's tiny run, set by
KIT_NOTEBOOK_OVERRIDES): every cell runs without a word on stderr, and the Results figure is shown
whole inside the column at a size whose text reads. The Results cell's outputs go to
test-artifacts/wizard/<frontend>/run-all-results.png, for a person to look at.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "wizard"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WINDOW = {"width": 900, "height": 1000}  # a laptop's notebook column; every message must fit in it
# JupyterLab asks whether to fetch Jupyter news in a toast that covers the lower right corner.
NO_NEWS = {"fetchNews": "false"}


@dataclass(frozen=True)
class Frontend:
    """A notebook frontend the wizard runs in, the ipywidgets it goes with, and where things are on its page."""

    name: str  # also the screenshots' folder
    ipywidgets_major: int
    notebook_page: str  # a notebook's page is this, then the notebook's path under the server's root
    output_area: str  # CSS class of a cell's output area, the box every message must fit in
    cell_outputs: str  # the first cell's outputs, for screenshots

    def problem(self) -> str:
        """What this environment lacks to run this frontend, "" when nothing."""
        if self.name == "lab":
            return "" if _version("jupyterlab")[:1] >= (4,) else "jupyterlab>=4 is not installed"
        notebook = _version("notebook")
        if not notebook or notebook[0] != 6:
            return f"classic Notebook 6 is not installed (notebook {'.'.join(map(str, notebook)) or 'missing'})"
        from notebook.services.config import ConfigManager

        loaded = ConfigManager().get("notebook").get("load_extensions", {})
        if not loaded.get("jupyter-js-widgets/extension"):
            return ("the widgets nbextension is not enabled "
                    "(jupyter nbextension enable --py widgetsnbextension --sys-prefix)")
        return ""


FRONTENDS = {
    "lab": Frontend("lab", 8, "/lab/tree/", "jp-OutputArea-output", ".jp-Cell .jp-Cell-outputArea"),
    "classic": Frontend("classic", 7, "/notebooks/", "output_subarea", ".cell .output_wrapper .output"),
}


def _version(package: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version(package).split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return ()


def _fail_in_ci_else_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI must have every piece: a skip there would hide a broken install
    pytest.skip(reason)


def _require(frontend: Frontend) -> None:
    widgets_major = _version("ipywidgets")[:1]
    if widgets_major != (frontend.ipywidgets_major,):
        other = "the README's test command" if frontend.name == "lab" else ".ci/run's second phase"
        pytest.skip(f"{frontend.name} runs with ipywidgets {frontend.ipywidgets_major}, and this environment has "
                    f"ipywidgets {'.'.join(map(str, _version('ipywidgets')))}; it runs in {other}")
    if not CHROMIUM.exists():
        _fail_in_ci_else_skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)")
    problem = frontend.problem()
    if problem:
        _fail_in_ci_else_skip(f"{frontend.name}: {problem}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise TimeoutError(f"the Jupyter server did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _server_command(frontend: Frontend, port: int, token: str, root: Path) -> list[str]:
    if frontend.name == "lab":
        return [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=", "--allow-root"]
    return [sys.executable, "-m", "notebook", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--NotebookApp.port_retries=0", f"--NotebookApp.token={token}", f"--NotebookApp.notebook_dir={root}",
            "--allow-root"]


@contextlib.contextmanager
def _serve(frontend: Frontend, tmp_path: Path, kernel_env: dict[str, str] | None = None):
    """A Jupyter server of our own (port, token, root dir, config dirs) for the frontend; stopped by its pid.
    kernel_env: more environment for the server and so for the kernels it starts."""
    root, settings = tmp_path / "root", tmp_path / "lab-settings"
    root.mkdir()
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps(NO_NEWS))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           # No user config or data (~/.jupyter, ~/.local/share/jupyter) changes the page.
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), **(kernel_env or {})}
    env.pop("MPLBACKEND", None)  # a user's kernel draws inline, as Jupyter sets it up
    log = tmp_path / "jupyter.log"
    with open(log, "w") as log_file:
        # Its own session, so the kernels it starts can be stopped with it.
        proc = subprocess.Popen(_server_command(frontend, port, token, root), env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield {"frontend": frontend, "root": root,
               "url": lambda notebook: f"{base}{frontend.notebook_page}{notebook}?token={token}"}
    finally:
        _stop(proc)


@pytest.fixture(params=list(FRONTENDS))
def jupyter(request, tmp_path):
    frontend = FRONTENDS[request.param]
    _require(frontend)
    with _serve(frontend, tmp_path) as server:
        yield server


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels left in the server's own process group
    except ProcessLookupError:
        pass


def _write_notebook(root: Path, config_path: Path) -> Path:
    cell = ("from utils.ui.setup_wizard import SetupWizard\n"
            f"wizard = SetupWizard(config_path={str(config_path)!r}, interactive=True)\n"
            "wizard")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = root / "wizard.ipynb"
    nbformat.write(nb, path)
    return path


def test_click_through_wizard_and_save(jupyter):
    from playwright.sync_api import expect, sync_playwright

    frontend, root = jupyter["frontend"], jupyter["root"]
    config_path, output_dir, data = root / "wizard_config.json", root / "run1", root / "train.txt"
    data.write_text("def add(a, b):\n    return a + b\n" * 50)
    _write_notebook(root, config_path)
    shots = ARTIFACTS / frontend.name
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()  # only this run's screenshots
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=WINDOW)
            console_errors: list[str] = []  # a widget that fails to render says why only here
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(jupyter["url"]("wizard.ipynb"))
            walk = Walk(page, expect, frontend, shots)
            try:
                (_open_lab if frontend.name == "lab" else _open_classic)(page)
                walk.through_all_steps(data, output_dir)
            except Exception as e:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)  # what the browser showed
                if console_errors:
                    e.add_note("Browser console errors:\n" + "\n".join(console_errors[-10:]))
                raise
        finally:
            browser.close()
    saved = json.loads(config_path.read_text())
    expected = {"dataset_source": "file", "dataset_path": str(data), "val_split": 0.2, "tokenizer_strategy": "bpe",
                "vocab_size": 300, "model_size": "small", "dropout": 0.1, "batch_size": 8, "learning_rate": 0.0005,
                "max_epochs": 2, "output_dir": str(output_dir)}
    assert {k: saved[k] for k in expected} == expected
    from utils.config import WizardConfig
    assert WizardConfig.load(config_path).batch_size == 8  # a valid config, not only JSON
    assert not walk.problems, f"{len(walk.problems)} problem(s) in {frontend.name}:\n" + "\n".join(walk.problems)


def _open_lab(page) -> None:
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # A cell run before the kernel is connected can be dropped; the status bar says when it is.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    # At 900 px the file browser would take a third of the window; a notebook user closes it.
    open_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if open_tab.count():
        open_tab.click()
    page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-Cell .jp-InputPrompt").first.get_by_text("[1]").wait_for(timeout=60_000)  # the cell ran
    _wait_for_wizard(page)


def _open_classic(page) -> None:
    page.wait_for_selector("#notebook .cell", timeout=60_000)
    page.wait_for_selector("#kernel_indicator_icon.kernel_idle_icon", timeout=60_000)
    page.locator(".cell .input_area").first.click()
    page.keyboard.press("Shift+Enter")
    page.locator(".cell .input_prompt").first.get_by_text("[1]").wait_for(timeout=60_000)  # the cell ran
    _wait_for_wizard(page)


def _wait_for_wizard(page) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(".wizard .wizard-step-dataset", timeout=15_000)
    except PlaywrightTimeout:
        raise AssertionError("the cell ran but no wizard is on the page (see failure.png and the console "
                             "errors below)") from None


def choice_label(field: str, value: str) -> str:
    """What the dropdown shows for a config value: its label from the config's metadata."""
    from utils.config import SETTINGS

    return SETTINGS[field].choices[value]


def field_label(field: str) -> str:
    from utils.config import SETTINGS

    return SETTINGS[field].label


# Each visible message (a field's error, the wizard's message line), and for each a reason it is not
# fully visible, or null: its text's box (a Range, so text cut off by an ellipsis or overflow counts)
# must lie inside the window, inside the cell's output area and inside every ancestor that clips.
VISIBILITY_JS = """
([outputArea]) => {
  // Only vertical scrolling: moving a clipping box sideways would hide exactly what is measured.
  const scrollIntoViewVertically = (el) => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      const overflowY = getComputedStyle(a).overflowY;
      if ((overflowY === 'auto' || overflowY === 'scroll') && a.scrollHeight > a.clientHeight) {
        const r = a.getBoundingClientRect(), e = el.getBoundingClientRect();
        a.scrollTop += (e.top - r.top) - (r.height - e.height) / 2;
      }
    }
  };
  const found = [];
  const width = document.documentElement.clientWidth;
  for (const el of document.querySelectorAll('.wizard-error-text, .wizard-message')) {
    if (!el.textContent.trim() || !el.checkVisibility()) continue;
    scrollIntoViewVertically(el);  // below the fold is not hidden: a person scrolls there
    const range = document.createRange();
    range.selectNodeContents(el);
    const t = range.getBoundingClientRect();
    const owner = el.parentElement.closest('[class*="wizard-error-"]') || el;  // the field's error widget
    const name = [...owner.classList].find(c => c.startsWith('wizard-')) || el.className;
    const where = `${name} ` +
                  `${JSON.stringify(el.textContent.trim().slice(0, 60))} text x ${t.left.toFixed(0)}..${t.right.toFixed(0)}`;
    const out = (r, h, v) => (h && (t.left < r.left - 1 || t.right > r.right + 1)) ||
                             (v && (t.top < r.top - 1 || t.bottom > r.bottom + 1));
    let why = null;
    if (t.left < -1 || t.right > width + 1) why = `outside the ${width} px window`;
    const area = el.closest('.' + outputArea);
    if (!why && !area) why = `not inside a .${outputArea}`;
    if (!why && out(area.getBoundingClientRect(), true, false)) {
      const r = area.getBoundingClientRect();
      why = `past the output area (x ${r.left.toFixed(0)}..${r.right.toFixed(0)})`;
    }
    for (let a = el.parentElement; !why && a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a), r = a.getBoundingClientRect();
      if (out(r, s.overflowX !== 'visible', s.overflowY === 'hidden' || s.overflowY === 'clip'))
        why = `clipped by ${a.tagName.toLowerCase()}.${[...a.classList].join('.')} ` +
              `(x ${r.left.toFixed(0)}..${r.right.toFixed(0)}, y ${r.top.toFixed(0)}..${r.bottom.toFixed(0)}, ` +
              `overflow ${s.overflowX}/${s.overflowY}; text y ${t.top.toFixed(0)}..${t.bottom.toFixed(0)})`;
    }
    if (!why && el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).display !== 'inline')
      why = `wider than its box (scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth})`;
    found.push([name, where, why]);
  }
  return found;
}
"""


class Walk:
    """Clicks through the wizard's steps; collects the problems found on the way that do not stop the walk."""

    def __init__(self, page, expect, frontend: Frontend, shots: Path):
        self.page, self.expect, self.frontend, self.shots = page, expect, frontend, shots
        self.problems: list[str] = []

    # ------------------------------------------------------------------ the steps
    def through_all_steps(self, data: Path, output_dir: Path) -> None:
        self.expect(self.page.locator(".wizard")).to_contain_text("1. Dataset")
        self.preset()
        self.dataset(data)
        self.tokenizer()
        self.model()
        self.training()
        self.review(output_dir)

    def preset(self) -> None:
        """The preset menu says what each preset is for; a GPU preset on this CPU says so, in on-screen words."""
        from utils.ui.presets import PRESET_WORDS

        menu = self.page.locator(".wizard-preset select")  # ipywidgets' option values are indices: pick by label
        menu.select_option(label=f"t4 — {PRESET_WORDS['t4']}")
        self.expect(self.page.locator(".wizard-message")).to_contain_text("sized for a GPU")
        self.shot("preset-t4-on-cpu")
        menu.select_option(label=f"tiny — {PRESET_WORDS['tiny']}")  # back to the CPU-sized run the walk expects
        self.expect(self.page.locator(".wizard-message")).to_contain_text("Applied preset 'tiny'")

    def dataset(self, data: Path) -> None:
        # Upload: the button right under Data source, and no File path error while nothing is uploaded.
        self.select("dataset_source", choice_label("dataset_source", "upload"))
        self.expect(self.page.locator(".wizard-upload")).to_be_visible()
        self.expect(self.page.locator(".wizard-row-dataset_path")).to_be_hidden()
        self.shot("step-1-dataset-upload")
        self.select("dataset_source", choice_label("dataset_source", "file"))
        # The path field appears, with its message for the still empty path (the invalid value replaces it).
        self.expect(self.page.locator(".wizard-error-dataset_path .wizard-error-text")).to_be_visible()
        self.invalid(1, "dataset", "dataset_path", "/content/drive/MyDrive/data/train.xlsx", "next")  # a spreadsheet
        self.fill("dataset_path", str(data))
        self.fill("val_split", "0.2")
        self.valid(1, "dataset", "dataset_path")
        self.next("tokenizer")

    def tokenizer(self) -> None:
        self.select("tokenizer_strategy", choice_label("tokenizer_strategy", "bpe"))
        self.invalid(2, "tokenizer", "vocab_size", "10", "next")
        self.fill("vocab_size", "300")
        self.expect(self.page.locator(".wizard-note-tokenizer")).to_contain_text("300")
        self.valid(2, "tokenizer", "vocab_size")
        self.next("model")

    def model(self) -> None:
        self.select("model_size", choice_label("model_size", "small"))
        self.invalid(3, "model", "dropout", "1.5", "next")
        self.fill("dropout", "0.1")
        self.page.locator("button.wizard-check").click()
        self.expect(self.page.locator(".wizard-note-check")).to_contain_text("an untrained model should score",
                                                                              ignore_case=True)
        self.valid(3, "model", "dropout")
        self.page.locator("button.wizard-inspect").click()  # ten checks of the small GPT on this CPU: tens of seconds
        self.expect(self.page.locator(".wizard-note-inspect")).to_contain_text("passed", timeout=300_000)
        self.expect(self.page.locator(".wizard-inspect-attention")).to_be_visible()  # the heatmaps, as an image
        for part, name in ((".wizard-note-inspect", "step-3-model-inspect"),
                           (".wizard-inspect-attention", "step-3-model-inspect-attention")):  # each scrolled to
            self.page.locator(part).screenshot(path=str(self.shots / f"{name}.png"))
        self.next("training")

    def training(self) -> None:
        self.invalid(4, "training", "batch_size", "0", "next")
        self.fill("batch_size", "8")
        self.fill("learning_rate", "0.0005")
        self.fill("max_epochs", "2")
        self.expect(self.page.locator(".wizard-note-precision")).to_contain_text("32-true")
        self.valid(4, "training", "batch_size")
        self.next("review")

    def review(self, output_dir: Path) -> None:
        self.invalid(5, "review", "output_dir", "", "save")
        self.fill("output_dir", str(output_dir))
        self.expect(self.page.locator(".wizard-note-summary")).to_contain_text(re.compile(r"batch.size", re.I))
        self.back_and_forth()
        self.page.locator("button.wizard-save").click()
        self.expect(self.page.locator(".wizard-message")).to_contain_text("wizard_config.json")  # where it saved
        self.valid(5, "review", "output_dir")

    def back_and_forth(self) -> None:
        """Back keeps what was entered: the training step shows batch size 8 again."""
        self.page.locator("button.wizard-back").click()
        self.expect(self.page.locator(".wizard-step-training")).to_be_visible()
        self.expect(self.page.locator(".wizard-field-batch_size input")).to_have_value("8")
        self.next("review")

    # ------------------------------------------------------------------ one stop: an invalid or a valid value
    def invalid(self, n: int, key: str, field: str, text: str, button: str) -> None:
        """Enter text into field: its message appears under it and the step's button is disabled."""
        error = self.page.locator(f".wizard-error-{field} .wizard-error-text")
        before = error.all_inner_texts()  # a message already there (a path still empty) is not the answer
        self.fill(field, text)
        self.expect(error).to_be_visible()
        self.expect(error).not_to_be_empty()
        if before:
            self.expect(error).not_to_have_text(before[0])
        self.expect(self.page.locator(f"button.wizard-{button}")).to_be_disabled()
        message = error.inner_text()
        if field_label(field).lower() not in message.lower():
            self.problems.append(f"step {n} ({key}): the message for {text!r} does not name the field as the "
                                 f"screen does ({field_label(field)!r}): {message!r}")
        measured = self.shot(f"step-{n}-{key}-invalid")
        assert f"wizard-error-{field}" in measured, f"the visibility check did not find this message: {measured}"

    def valid(self, n: int, key: str, field: str) -> None:
        self.expect(self.page.locator(f".wizard-error-{field}")).to_have_text("")
        if key != "review":
            self.expect(self.page.locator("button.wizard-next")).to_be_enabled()
        measured = self.shot(f"step-{n}-{key}")
        if key == "review":  # after Save: the message saying where it went was measured too
            assert "wizard-message" in measured, f"the visibility check did not find the message: {measured}"

    def shot(self, name: str) -> list[str]:
        """Check that every visible message is fully visible, take the screenshot; the messages' CSS names."""
        self.page.wait_for_timeout(200)  # let a re-layout after the last change settle before measuring
        measured = self.page.evaluate(VISIBILITY_JS, [self.frontend.output_area])
        for _, where, why in measured:
            if why:
                self.problems.append(f"{name}: at {WINDOW['width']} px, {where} is not fully visible: {why}")
        self.page.locator(self.frontend.cell_outputs).first.screenshot(path=str(self.shots / f"{name}.png"))
        return [css for css, _, _ in measured]

    # ------------------------------------------------------------------ widgets
    def fill(self, field: str, text: str) -> None:
        box = self.page.locator(f".wizard-field-{field} input")
        box.fill(text)
        box.press("Tab")  # numeric inputs send their value at the latest on blur

    def select(self, field: str, label: str) -> None:
        self.page.locator(f".wizard-field-{field} select").select_option(label=label)

    def next(self, step_key: str) -> None:
        self.expect(self.page.locator("button.wizard-next")).to_be_enabled()
        self.page.locator("button.wizard-next").click()
        self.expect(self.page.locator(f".wizard-step-{step_key}")).to_be_visible()


# ---------------------------------------------------------------------- train.ipynb, Run all
# The notebook test's tiny run (tests/test_train_notebook.py), set as CI sets it: the notebook runs as shipped.
TINY_RUN = "model_size=tiny max_seq_len=32 batch_size=8 val_split=0.02 log_every_n_steps=1 max_steps=3"
RESULTS_TITLE = "#@title Curves, throughput and samples"
STDERR_OUTPUTS = {"lab": '[data-mime-type="application/vnd.jupyter.stderr"]',
                  "classic": ".output_stderr, .output_error"}
CODE_CELL = {"lab": ".jp-CodeCell", "classic": ".cell.code_cell"}

# The figure as shown: its PNG's size, its box on the page, and the box of the output area it sits in.
FIGURE_BOX_JS = """
([img, outputArea]) => {
  const r = img.getBoundingClientRect(), area = img.closest('.' + outputArea);
  const a = area ? area.getBoundingClientRect() : null;
  return {natural: [img.naturalWidth, img.naturalHeight], shown: [r.width, r.height],
          x: [r.left, r.right], area: a ? [a.left, a.right] : null, window: document.documentElement.clientWidth};
}
"""


@pytest.fixture(params=list(FRONTENDS))
def run_all_server(request, tmp_path):
    """A server whose kernels run train.ipynb's tiny CI run into a workspace of their own; the notebook sits in a
    folder laid out like the checkout (utils/ and templates/ linked to this one), so its Setup cell finds the kit
    as it does in a local Jupyter, and the server's autosave never writes to the repository's copy."""
    frontend = FRONTENDS[request.param]
    _require(frontend)
    kernel_env = {"KIT_WORKSPACE": str(tmp_path / "workspace"), "KIT_NOTEBOOK_OVERRIDES": TINY_RUN,
                  "OMP_NUM_THREADS": "1"}
    with _serve(frontend, tmp_path, kernel_env) as server:
        root = server["root"]
        (root / "notebooks").mkdir()
        shutil.copy(REPO / "notebooks" / "train.ipynb", root / "notebooks" / "train.ipynb")
        for package in ("utils", "templates"):
            (root / package).symlink_to(REPO / package, target_is_directory=True)
        yield server


def test_run_all_shows_the_results_figure(run_all_server):
    """Run all of train.ipynb as shipped, by the frontend's menu, at 900 px: no cell writes to stderr, and the
    Results cell shows its figure whole, inside the notebook's column, at a size whose text can be read. The
    cell's outputs are kept as test-artifacts/wizard/<frontend>/run-all-results.png for a person to look at."""
    from playwright.sync_api import expect, sync_playwright

    frontend = run_all_server["frontend"]
    shots = ARTIFACTS / frontend.name
    shots.mkdir(parents=True, exist_ok=True)
    (shots / "run-all-results.png").unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=WINDOW)
            page.set_default_timeout(30_000)
            page.goto(run_all_server["url"]("notebooks/train.ipynb"))
            try:
                (_run_all_lab if frontend.name == "lab" else _run_all_classic)(page)
                # The last cell loads the export and samples from it: Run all got to the end.
                expect(page.get_by_text("Loaded GPT from")).to_be_visible(timeout=480_000)
                stderr = page.locator(STDERR_OUTPUTS[frontend.name]).all_inner_texts()
                assert stderr == [], "cells wrote to stderr:\n" + "\n---\n".join(stderr)
                cell = page.locator(CODE_CELL[frontend.name]).filter(has_text=RESULTS_TITLE)
                figure = cell.locator("img").first
                figure.scroll_into_view_if_needed()
                expect(figure).to_be_visible()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure.element_handle())
                box = page.evaluate(FIGURE_BOX_JS, [figure.element_handle(), frontend.output_area])
                cell.locator(frontend.cell_outputs.split()[-1]).first.screenshot(
                    path=str(shots / "run-all-results.png"))
            except Exception:
                page.screenshot(path=str(shots / "run-all-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    print(frontend.name, box)
    (natural_w, natural_h), (shown_w, shown_h) = box["natural"], box["shown"]
    assert box["area"], f"the figure is not inside a .{frontend.output_area}"
    assert box["x"][0] >= box["area"][0] - 1 and box["x"][1] <= box["area"][1] + 1, \
        f"the figure (x {box['x']}) is wider than the output area (x {box['area']})"
    assert box["x"][1] <= box["window"] + 1, f"the figure (x {box['x']}) runs past the {box['window']} px window"
    assert abs(shown_w / natural_w - shown_h / natural_h) < 0.02, f"the figure is distorted: {box}"
    # Readable: a 10 pt label (matplotlib's default size, the panels' titles) is at least 10 px tall on the page.
    from utils.plots import TRAINING_FIGSIZE

    px_per_point = shown_w / (TRAINING_FIGSIZE[0] * 72)
    assert 10 * px_per_point >= 10, (f"the figure is shown {shown_w:.0f} px wide for its {TRAINING_FIGSIZE[0]} in: "
                                     f"its 10 pt labels are {10 * px_per_point:.1f} px tall")


def _run_all_lab(page) -> None:
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    open_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if open_tab.count():
        open_tab.click()  # the file browser closed, as at the wizard's walk
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


def _run_all_classic(page) -> None:
    page.wait_for_selector("#notebook .cell", timeout=60_000)
    page.wait_for_selector("#kernel_indicator_icon.kernel_idle_icon", timeout=60_000)
    page.locator("#celllink").click()  # the Cell menu
    page.locator("#run_all_cells").click()

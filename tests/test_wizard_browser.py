"""The setup wizard in a real browser: JupyterLab on 127.0.0.1, driven by Playwright in Debian's Chromium.

Clicks through every step (one invalid value first), saves, and checks the saved WizardConfig file.
A screenshot of each step goes to test-artifacts/wizard/step-<n>-<name>.png in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "wizard"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# JupyterLab asks whether to fetch Jupyter news in a toast that covers the lower right corner.
NO_NEWS = {"fetchNews": "false"}


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server of our own (port, token, root dir, settings); stopped by its pid afterwards."""
    _require_chromium()
    root, settings = tmp_path / "root", tmp_path / "lab-settings"
    root.mkdir()
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps(NO_NEWS))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = tmp_path / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--allow-root"]
    with open(log, "w") as log_file:
        # Its own session, so the kernels it starts can be stopped with it.
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield {"base": base, "token": token, "root": root}
    finally:
        _stop(proc)


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


def test_click_through_wizard_and_save(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    root = jupyter_lab["root"]
    config_path, output_dir = root / "wizard_config.json", root / "run1"
    _write_notebook(root, config_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(f"{jupyter_lab['base']}/lab/tree/wizard.ipynb?token={jupyter_lab['token']}")
            try:
                _run_wizard_cell(page)
                _click_through(page, expect, output_dir)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)  # what the browser showed
                raise
        finally:
            browser.close()
    saved = json.loads(config_path.read_text())
    assert {k: saved[k] for k in ("val_split", "tokenizer_strategy", "model_size", "batch_size", "learning_rate",
                                  "max_epochs", "output_dir")} == {
        "val_split": 0.2, "tokenizer_strategy": "byte", "model_size": "small", "batch_size": 8,
        "learning_rate": 0.0005, "max_epochs": 2, "output_dir": str(output_dir)}
    from utils.config import WizardConfig
    assert WizardConfig.load(config_path).batch_size == 8  # a valid config, not only JSON


def _run_wizard_cell(page) -> None:
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # A cell run before the kernel is connected can be dropped; the status bar says when it is.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".wizard .wizard-step-dataset", timeout=60_000)


def _shot(page, n: int, name: str) -> None:
    page.locator(".wizard").screenshot(path=str(ARTIFACTS / f"step-{n}-{name}.png"))


def _fill(page, field: str, text: str) -> None:
    box = page.locator(f".wizard-field-{field} input")
    box.fill(text)
    box.press("Tab")  # numeric inputs send their value at the latest on blur


def choice_label(field: str, value: str) -> str:
    """What the dropdown shows for a config value: its label from the config's metadata."""
    from utils.config import SETTINGS

    return SETTINGS[field].choices[value]


def _next(page, expect, step_key: str) -> None:
    expect(page.locator("button.wizard-next")).to_be_enabled()
    page.locator("button.wizard-next").click()
    expect(page.locator(f".wizard-step-{step_key}")).to_be_visible()


def _click_through(page, expect, output_dir: Path) -> None:
    expect(page.locator(".wizard")).to_contain_text("1. Dataset")
    _fill(page, "val_split", "0.2")
    _shot(page, 1, "dataset")
    _next(page, expect, "tokenizer")

    strategy = page.locator(".wizard-field-tokenizer_strategy select")
    strategy.select_option(label=choice_label("tokenizer_strategy", "byte"))
    expect(page.locator(".wizard-note-tokenizer")).to_contain_text("256 token ids (byte tokenizer)")
    _shot(page, 2, "tokenizer")
    _next(page, expect, "model")

    page.locator(".wizard-field-model_size select").select_option(label=choice_label("model_size", "small"))
    expect(page.locator(".wizard-note-model")).to_contain_text("parameters (gpt small")
    page.locator("button.wizard-check").click()
    expect(page.locator(".wizard-note-check")).to_contain_text("Forward/backward on a 2 x 128 dummy batch")
    _shot(page, 3, "model")
    _next(page, expect, "training")

    _fill(page, "batch_size", "0")  # invalid first: its message beside the field, Next disabled
    expect(page.locator(".wizard-error-batch_size")).to_have_text("batch_size=0 must be >= 1")
    expect(page.locator("button.wizard-next")).to_be_disabled()
    _shot(page, 4, "training-invalid")
    _fill(page, "batch_size", "8")
    _fill(page, "learning_rate", "0.0005")
    _fill(page, "max_epochs", "2")
    expect(page.locator(".wizard-error-batch_size")).to_have_text("")
    expect(page.locator(".wizard-note-precision")).to_contain_text("32-true")
    _shot(page, 4, "training")
    _next(page, expect, "review")

    _fill(page, "output_dir", str(output_dir))
    expect(page.locator(".wizard-note-summary")).to_contain_text("batch_size = 8")
    page.locator("button.wizard-save").click()
    expect(page.locator(".wizard-message")).to_contain_text("Saved to")
    _shot(page, 5, "review")

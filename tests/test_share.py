"""Sharing a trained model: `export --push-to-hub` (utils.hub) and `export --onnx` (utils.onnx_export).

Mocked, because they cannot run here: the Hugging Face Hub's network calls (HfApi.create_repo and
HfApi.upload_folder are replaced by recorders of what would be sent) and, for one test, the
google.colab module holding the HF_TOKEN secret. ONNX export and onnxruntime run for real.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import corpus_start
from tests.test_training import _write_labelled
from utils.config import WizardConfig
from utils.data.tokenizers import CharTokenizer
from utils.env import DeviceInfo
from utils.training import train
from utils.cli import main
from utils.export import export_result

CPU = DeviceInfo("cpu", "CPU")
TOKEN = "hf_kitTestToken0123456789abcdefXYZ"
NO_ORT = "onnxruntime is not installed (pip install -r requirements-test.txt)"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    lm = train(WizardConfig(dataset_source="file", dataset_path=str(corpus_start(root, 6_000)), max_seq_len=32,
                            batch_size=4, max_steps=3, model_size="tiny", log_every_n_steps=1,
                            output_dir=str(root / "lm")), device=CPU)
    classifier = train(WizardConfig(
        task="classification", model_template="classifier", model_size="tiny", dataset_source="file",
        dataset_path=str(_write_labelled(root, "csv")), text_column="review", label_column="sentiment",
        max_seq_len=24, batch_size=16, learning_rate=3e-3, max_steps=4, val_split=0.2,
        output_dir=str(root / "classifier")), device=CPU)
    return {"lm": lm, "classifier": classifier}


@pytest.fixture
def hub(monkeypatch):
    """HfApi's network calls recorded instead of sent; no token and no google.colab unless a test sets them."""
    from huggingface_hub import HfApi, RepoUrl

    sent = {}

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **kw):
        sent["create_repo"] = {"repo_id": repo_id, "token": token, "private": private, "exist_ok": exist_ok,
                               "repo_type": repo_type}
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name under the token's user
        return RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, *, repo_id, folder_path, token=None, repo_type=None, **kw):
        folder = Path(folder_path)
        sent["upload_folder"] = {"repo_id": repo_id, "token": token, "repo_type": repo_type,
                                 "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                                 "card": (folder / "README.md").read_text(encoding="utf-8")}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return sent


def _token_nowhere(capsys, *folders):
    out = capsys.readouterr()
    assert TOKEN not in out.out and TOKEN not in out.err
    for folder in folders:
        for path in Path(folder).rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    return out


def test_push_uploads_every_export_file_and_a_model_card_to_a_private_repo(runs, hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = runs["lm"].output_dir
    assert main(["export", str(run), "--to", str(tmp_path / "exp"), "--push-to-hub", "me/tiny-gpt"]) == 0
    assert hub["create_repo"] == {"repo_id": "me/tiny-gpt", "token": TOKEN, "private": True, "exist_ok": True,
                                  "repo_type": "model"}
    sent = hub["upload_folder"]
    assert sent["repo_id"] == "me/tiny-gpt" and sent["token"] == TOKEN
    assert {".kit-export.json", "README.md", "config.json", "model.safetensors"} <= set(sent["files"])
    assert any(f.startswith("tokenizer/") for f in sent["files"])
    exported = sorted(str(p.relative_to(tmp_path / "exp")) for p in (tmp_path / "exp").rglob("*") if p.is_file())
    assert sent["files"] == exported  # every export file, the card among them
    card = sent["card"]
    assert "library_name: pytorch" in card and "# tiny-gpt" in card
    assert "A gpt (tiny) model for language modelling (next-token prediction)" in card and "corpus-6000.txt" in card
    assert "- steps: 3 of 3 planned" in card and "- precision: 32-true" in card
    assert "- best validation loss: " in card and "(step 3)" in card and "- validation perplexity there: " in card
    assert "model = load_exported(snapshot_download('me/tiny-gpt'))" in card
    out = _token_nowhere(capsys, tmp_path / "exp", run)
    assert f"Uploaded {tmp_path / 'exp'} to https://huggingface.co/me/tiny-gpt (private), with a model card" in out.out


def test_public_push_of_a_classifier_from_python_with_the_colab_secret(runs, hub, tmp_path, monkeypatch, capsys):
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = lambda name: TOKEN if name == "HF_TOKEN" else None
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    result = runs["classifier"]
    export_result(result, tmp_path / "exp", push_to_hub="reviews", public=True)
    assert hub["create_repo"]["private"] is False and hub["create_repo"]["token"] == TOKEN
    assert hub["upload_folder"]["repo_id"] == "me/reviews"
    card = hub["upload_folder"]["card"]
    assert "for text classification" in card and "- validation accuracy there: " in card
    assert 'model.predict(["a text"])' in card and "labels.json" in hub["upload_folder"]["files"]
    _token_nowhere(capsys, tmp_path / "exp", result.output_dir)


def test_without_a_token_one_line_says_how_to_add_one(runs, hub, tmp_path, capsys):
    assert main(["export", str(runs["lm"].output_dir), "--to", str(tmp_path / "exp"), "--push-to-hub", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "create_repo" not in hub
    assert not (tmp_path / "exp").exists()  # the token is looked for before anything is written
    assert err.startswith("error: No Hugging Face token (no HF_TOKEN in the environment): add a Hugging Face token "
                          "with write access (https://huggingface.co/settings/tokens) as a Colab secret named HF_TOKEN")


def test_a_refusal_by_the_hub_is_one_line_without_the_token(runs, hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    http = pytest.importorskip("httpx2") if "httpx2" in sys.modules else pytest.importorskip("httpx")  # hub's client
    url = "https://huggingface.co/api/repos/create"
    response = http.Response(401, request=http.Request("POST", url))

    def refuse(self, repo_id, **kw):
        raise HfHubHTTPError(f"401 Client Error: Unauthorized for url: {url}", response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["export", str(runs["lm"].output_dir), "--to", str(tmp_path / "exp"), "--push-to-hub", "me/x"]) == 2
    err = _token_nowhere(capsys, tmp_path / "exp").err
    assert err.count("\n") == 1 and "Uploading to 'me/x' failed (HfHubHTTPError: 401 Client Error" in err


# ---------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("name", ["lm", "classifier"])
def test_both_templates_export_to_onnx_and_match_pytorch(runs, name, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime", reason=NO_ORT)
    from utils.onnx_export import TOLERANCE
    from utils.loading import load_run

    result = runs[name]
    assert main(["export", str(result.output_dir), "--to", str(tmp_path / "exp"), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert f"ONNX: {tmp_path / 'exp' / 'model.onnx'}; on a batch of 2 x " in out and "(tolerance 0.0001)" in out
    # Another batch and sequence length than the export traced: the axes are dynamic.
    run = load_run(result.output_dir)
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"))
    ids = torch.randint(0, run.tokenizer.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    feed = {"input_ids": ids.numpy()}
    with torch.no_grad():
        if name == "classifier":
            mask = torch.ones(3, 7, dtype=torch.bool)
            mask[2, 4:] = False
            feed["attention_mask"] = mask.numpy()
            expected = run.model(ids, mask)
        else:
            expected = run.model(ids)
    got = torch.from_numpy(session.run(None, feed)[0])
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= TOLERANCE


class _Cholesky(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(8, 4)

    def forward(self, idx):
        h = self.emb(idx)  # (B, T, 4)
        square = h[:, :4, :] @ h[:, :4, :].transpose(1, 2) + torch.eye(4)  # (B, 4, 4)
        return h + torch.linalg.cholesky(square).sum()


def test_an_operator_onnx_lacks_is_named(tmp_path):
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    from utils.onnx_export import OnnxExportError, export_onnx

    predictor = SimpleNamespace(config=WizardConfig(max_seq_len=8), tokenizer=CharTokenizer(list("abcdefgh")),
                                model=_Cholesky(), pad_id=0)
    with pytest.raises(OnnxExportError, match=r"ONNX export failed at the operator aten::linalg_cholesky \(opset 17\)"):
        export_onnx(predictor, tmp_path)


def test_missing_onnxruntime_is_one_line_saying_what_to_install(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not installed
    assert main(["export", str(runs["lm"].output_dir), "--to", str(tmp_path / "exp"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: ONNX export needs the optional packages onnx and onnxruntime (onnxruntime is missing): "
                   "pip install onnx onnxruntime\n")

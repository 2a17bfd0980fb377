"""Your own model: a .py file or a Gist (served from 127.0.0.1) trains; broken ones say what is wrong."""

from __future__ import annotations

import importlib.util
import json
import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from utils.config import WizardConfig
from utils.data import prepare_data
from utils.training import train
from utils.data.spec import build_data_spec
from utils.models.build import build_model
from utils.models.tasks import ClassificationTask, LanguageModelTask
from utils.models.user_models import (GIST_BASE_URL_ENV, GistRef, UserModelError, check_embedding_fits, check_model,
                               fetch_gist, gist_raw_url, parse_gist_ref)
from utils.export import export_result

# A language model the way a visual builder exports one: build_model(config) plus a config.json.
BUILD_MODEL_LM = '''
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.mix = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, tokens):  # a custom input name: the kit passes ids positionally
        return self.out(torch.tanh(self.mix(self.embed(tokens))))  # (B, T, V)


def build_model(config):
    return TinyLM(config["vocab_size"], config["d_model"])
'''

# A Model class whose constructor takes no arguments: it hard-codes the byte vocabulary.
NO_ARG_MODEL_LM = '''
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 16)
        self.out = nn.Linear(16, 256)

    def forward(self, x):
        return self.out(self.embed(x))
'''

# A Model(config) class, served as a Gist.
CONFIG_MODEL_LM = '''
from dataclasses import dataclass
from torch import nn


@dataclass
class Settings:  # a dataclass: needs the module registered in sys.modules while importing
    width: int


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        s = Settings(config["width"])
        self.embed = nn.Embedding(config["vocab_size"], s.width)
        self.out = nn.Linear(s.width, config["vocab_size"])

    def forward(self, x):
        return self.out(self.embed(x))
'''

# A classifier that takes no attention mask; mean-pools over all positions.
MASKLESS_CLASSIFIER = '''
from torch import nn


def build_model(config):
    return Bag(config["vocab_size"], config["num_classes"])


class Bag(nn.Module):
    def __init__(self, vocab_size, num_classes):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(dim=1))  # (B, num_classes)
'''


def write_model(folder: Path, code: str, config: dict | None = None, name: str = "model.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def lm_config(tmp_path: Path, **changes) -> WizardConfig:
    base = dict(max_steps=3, max_seq_len=32, batch_size=4, val_split=0.02, log_every_n_steps=1,
                output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def char_vocab_size() -> int:
    return prepare_data(build_data_spec(WizardConfig(max_seq_len=32))).tokenizer.vocab_size


# ------------------------------------------------------------------------------ a local Gist server

class GistServer:
    """Serves Gists like gist.github.com: /{user}/{id}/raw/{file}, and /{id}/raw/{file} redirects there."""

    def __init__(self):
        self.files: dict[str, bytes] = {}  # "/alice/abc123/raw/model.py" -> contents
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                owned = next((p for p in server.files if p.endswith(self.path) and p != self.path), None)
                if self.path in server.files:
                    body = server.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif owned and self.path.count("/") == 3:  # /{id}/raw/{file}: redirect to the owner's URL
                    self.send_response(302)
                    self.send_header("Location", owned)
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add_gist(self, user: str, gist_id: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            self.files[f"/{user}/{gist_id}/raw/{name}"] = textwrap.dedent(text).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def gist_server():
    server = GistServer()
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here any more: connection refused


# ------------------------------------------------------------------------------ training

def test_model_file_with_build_model_and_config_json_trains(tmp_path):
    path = write_model(tmp_path / "mine", BUILD_MODEL_LM, config={"d_model": 24})
    result = train(lm_config(tmp_path, model_source="file", model_path=str(path)))

    assert result.global_step == 3
    assert result.val_loss is not None and result.val_loss < 10
    assert type(result.model).__name__ == "TinyLM"
    assert result.model.embed.weight.shape == (result.tokenizer.vocab_size, 24)  # vocab from the kit, width from config.json
    kept = tmp_path / "run" / "user_model"
    assert (kept / "model.py").read_text() == path.read_text()  # the code this run trained, for export
    assert json.loads((kept / "config.json").read_text()) == {"d_model": 24}


def test_model_class_with_no_arg_constructor_trains(tmp_path):
    path = write_model(tmp_path / "mine", NO_ARG_MODEL_LM)
    result = train(lm_config(tmp_path, model_source="file", model_path=str(path), tokenizer_strategy="byte"))
    assert result.global_step == 3
    assert type(result.model).__name__ == "Model"
    assert not (tmp_path / "run" / "user_model" / "config.json").exists()


def test_gist_url_trains_from_the_configured_server(tmp_path, gist_server, monkeypatch):
    gist_id = "aa5a315d61ae9438b18d"
    gist_server.add_gist("alice", gist_id, {"model.py": CONFIG_MODEL_LM, "config.json": json.dumps({"width": 20})})
    monkeypatch.setenv(GIST_BASE_URL_ENV, gist_server.url)
    config = lm_config(tmp_path, model_source="gist", gist_id=f"https://gist.github.com/alice/{gist_id}")
    result = train(config)

    assert result.global_step == 3
    assert result.model.embed.weight.shape[1] == 20
    assert gist_server.requests == [f"/alice/{gist_id}/raw/model.py", f"/alice/{gist_id}/raw/config.json"]
    assert "class Settings" in (tmp_path / "run" / "user_model" / "model.py").read_text()


def test_a_gist_run_resumes_offline_from_its_downloaded_copy(tmp_path, gist_server, monkeypatch):
    gist_server.add_gist("alice", "cafe42", {"model.py": CONFIG_MODEL_LM, "config.json": json.dumps({"width": 8})})
    monkeypatch.setenv(GIST_BASE_URL_ENV, gist_server.url)
    first = train(lm_config(tmp_path, model_source="gist", gist_id="alice/cafe42"))
    gist_server.close()  # the second session has no network
    second = train(lm_config(tmp_path, model_source="gist", gist_id="alice/cafe42", max_steps=5))
    assert (first.global_step, second.global_step, second.steps_run) == (3, 5, 2)
    assert second.resumed_from is not None and second.resumed_from.name == "last.ckpt"


def test_bare_gist_id_follows_the_redirect_and_reuses_the_download(tmp_path, gist_server):
    gist_server.add_gist("bob", "123abc", {"model.py": NO_ARG_MODEL_LM})  # no config.json in this Gist
    folder = tmp_path / "user_model"
    files = fetch_gist("123abc", folder, base_url=gist_server.url)
    assert files.code == (folder / "model.py").resolve() and files.config is None
    assert gist_server.requests[:2] == ["/123abc/raw/model.py", "/bob/123abc/raw/model.py"]

    gist_server.close()  # offline now: the copy in the folder is used
    again = fetch_gist("https://gist.github.com/bob/123abc", folder, base_url=closed_port_url())
    assert again.code.read_text() == files.code.read_text()


@pytest.mark.parametrize("text, ref", [
    ("aa5a315d61ae9438b18d", GistRef("aa5a315d61ae9438b18d")),
    ("  alice/aa5a315d  ", GistRef("aa5a315d", "alice")),
    ("https://gist.github.com/aa5a315d", GistRef("aa5a315d")),
    ("https://gist.github.com/alice/aa5a315d", GistRef("aa5a315d", "alice")),
    ("gist.github.com/alice/aa5a315d#file-model-py", GistRef("aa5a315d", "alice")),
    ("https://gist.githubusercontent.com/alice/aa5a315d/raw/0f1e2d/model.py", GistRef("aa5a315d", "alice")),
    ("https://gist.github.com/aa5a315d.git", GistRef("aa5a315d")),
])
def test_gist_ids_and_urls_parse(text, ref):
    assert parse_gist_ref(text) == ref


def test_gist_raw_urls_follow_the_base_url(monkeypatch):
    ref = GistRef("aa5a315d", "alice")
    monkeypatch.delenv(GIST_BASE_URL_ENV, raising=False)
    assert gist_raw_url(ref, "model.py") == "https://gist.github.com/alice/aa5a315d/raw/model.py"
    monkeypatch.setenv(GIST_BASE_URL_ENV, "http://127.0.0.1:9/")
    assert gist_raw_url(GistRef("aa5a315d"), "config.json") == "http://127.0.0.1:9/aa5a315d/raw/config.json"
    assert gist_raw_url(ref, "model.py", base_url="http://x") == "http://x/alice/aa5a315d/raw/model.py"


def test_not_a_gist_id_is_refused_by_the_config():
    with pytest.raises(UserModelError, match=r"Gist id or URL \(gist_id\): 'not a gist!' is not a Gist id or URL"):
        parse_gist_ref("not a gist!")
    problems = WizardConfig(model_source="gist", gist_id="https://gist.github.com/a/b/c").problems()
    assert problems == ["Gist id or URL (gist_id): 'https://gist.github.com/a/b/c' is not a Gist id or URL; paste the "
                        "id (the hex string, e.g. 'aa5a315d61ae9438b18d') or the Gist's URL "
                        "(https://gist.github.com/USER/ID)."]
    assert WizardConfig(model_source="gist", gist_id="alice/aa5a315d").problems() == []


# ------------------------------------------------------------------------------ broken models

def build_from(tmp_path: Path, code: str, config: dict | None = None, vocab_size: int = 50, **changes):
    path = write_model(tmp_path / "mine", code, config)
    wizard = WizardConfig(**{"model_source": "file", "model_path": str(path), "max_seq_len": 32,
                             "output_dir": str(tmp_path / "run"), **changes})
    return build_model(wizard, vocab_size, num_classes=3 if wizard.task == "classification" else 0)


def test_syntax_error_names_the_file_and_line(tmp_path):
    code = "import torch\n\ndef build_model(config:\n    return None\n"
    with pytest.raises(UserModelError) as e:
        build_from(tmp_path, code)
    msg = str(e.value)
    assert "Importing" in msg and "model.py" in msg and "line 3" in msg and "SyntaxError" in msg
    assert "build_model(config: dict)" in msg  # what the kit expected


def test_import_error_shows_the_users_traceback(tmp_path):
    code = "import torch\nimport not_a_real_package_xyz\n\ndef build_model(config):\n    pass\n"
    with pytest.raises(UserModelError) as e:
        build_from(tmp_path, code)
    msg = str(e.value)
    assert f'File "{(tmp_path / "mine" / "model.py").resolve()}", line 2' in msg
    assert "ModuleNotFoundError: No module named 'not_a_real_package_xyz'" in msg
    assert "!pip install not_a_real_package_xyz" in msg
    assert "user_models.py" not in msg  # the kit's own frames are left out


def test_importing_a_sibling_file_says_to_use_one_file(tmp_path):
    write_model(tmp_path / "mine", "X = 1\n", name="layers.py")
    with pytest.raises(UserModelError, match=r"layers.py sits beside model.py, but the kit imports model.py on its own"):
        build_from(tmp_path, "from layers import X\n\ndef build_model(config):\n    pass\n")


def test_error_inside_build_model_shows_the_users_line(tmp_path):
    code = "def build_model(config):\n    layers = config['n_layer']\n"
    with pytest.raises(UserModelError) as e:
        build_from(tmp_path, code)
    msg = str(e.value)
    assert "build_model(config) in" in msg and "line 2" in msg and "KeyError: 'n_layer'" in msg
    assert "'vocab_size': 50" in msg  # the config the kit passed


def test_wrong_output_shape_says_what_was_expected(tmp_path):
    code = BUILD_MODEL_LM.replace("self.out = nn.Linear(d_model, vocab_size)", "self.out = nn.Linear(d_model, 7)")
    with pytest.raises(UserModelError, match=r"returned logits of shape \(2, 16, 7\); the kit expected \(2, 16, 50\)"):
        build_from(tmp_path, code, {"d_model": 8})


def test_classifier_returning_per_token_logits_is_refused(tmp_path):
    code = MASKLESS_CLASSIFIER.replace(".mean(dim=1)", "")
    with pytest.raises(UserModelError, match=r"returned logits of shape \(2, 16, 3\); the kit expected \(2, 3\)"):
        build_from(tmp_path, code, task="classification", model_template="classifier",
                   dataset_source="file", dataset_path="x.csv")


def test_model_without_parameters_is_refused(tmp_path):
    code = ("import torch.nn.functional as F\nfrom torch import nn\n\nclass Model(nn.Module):\n"
            "    def __init__(self, config):\n        super().__init__()\n        self.v = config['vocab_size']\n"
            "    def forward(self, x):\n        return F.one_hot(x, self.v).float()\n")
    with pytest.raises(UserModelError, match="has no trainable parameters"):
        build_from(tmp_path, code)


def test_file_without_build_model_or_model_is_refused(tmp_path):
    with pytest.raises(UserModelError, match=r"defines neither build_model nor Model\. .*Names it defines: make_net"):
        build_from(tmp_path, "def make_net(config):\n    pass\n")


def test_forward_error_shows_the_users_traceback(tmp_path):
    code = BUILD_MODEL_LM.replace("return self.out(", "raise RuntimeError('shapes do not line up'); return self.out(")
    with pytest.raises(UserModelError) as e:
        build_from(tmp_path, code, {"d_model": 8})
    msg = str(e.value)
    assert "failed on a dummy batch: model(input_ids) with input_ids of shape (2, 16)" in msg
    assert "in forward" in msg and "RuntimeError: shapes do not line up" in msg


def test_returning_a_tuple_is_refused(tmp_path):
    code = BUILD_MODEL_LM.replace("return self.out(torch.tanh(self.mix(self.embed(tokens))))",
                                  "return self.out(self.embed(tokens)), None")
    with pytest.raises(UserModelError, match=r"returned tuple; the kit expected logits of shape \(2, 16, 50\): a tensor, an output with .logits"):
        build_from(tmp_path, code, {"d_model": 8})


def test_declared_vocab_size_must_match_the_tokenizer(tmp_path):
    with pytest.raises(UserModelError, match=r"config.json declares vocab_size=10 but the tokenizer's vocab_size is 50"):
        build_from(tmp_path, BUILD_MODEL_LM, {"d_model": 8, "vocab_size": 10})


def test_an_embedding_smaller_than_the_tokenizer_fails_before_training(tmp_path):
    path = write_model(tmp_path / "mine", NO_ARG_MODEL_LM.replace("256", "64"))  # only 64 ids
    config = lm_config(tmp_path, model_source="file", model_path=str(path), tokenizer_strategy="byte")
    with pytest.raises(UserModelError, match=r"tokenizer has 256 ids but the model's embedding has 64 rows"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_passed_in_model_is_checked_against_the_tokenizer_too(tmp_path):
    tiny = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(UserModelError, match=r"tokenizer has \d+ ids but the model's embedding has 10 rows"):
        train(lm_config(tmp_path), model=tiny)
    check_embedding_fits(nn.Embedding(300, 2), 256)  # more rows than ids is fine
    positions_first = nn.ModuleDict({"wpe": nn.Embedding(32, 4), "wte": nn.Embedding(256, 4)})
    check_embedding_fits(positions_first, 256)  # a smaller position table declared first is not the token embedding


def test_missing_gist_is_a_clear_404(tmp_path, gist_server):
    with pytest.raises(UserModelError, match=r"Gist abc404 has no model.py: .*/abc404/raw/model.py answered 404"):
        fetch_gist("abc404", tmp_path / "user_model", base_url=gist_server.url)


def test_unreachable_gist_server_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv(GIST_BASE_URL_ENV, closed_port_url())
    config = lm_config(tmp_path, model_source="gist", gist_id="abc123")
    with pytest.raises(UserModelError, match=rf"Could not reach http://127.0.0.1:\d+/abc123/raw/model.py .*"
                                             rf"{GIST_BASE_URL_ENV}"):
        train(config)


def test_missing_model_file_is_a_clear_message(tmp_path):
    config = lm_config(tmp_path, model_source="file", model_path=str(tmp_path / "nowhere.py"))
    with pytest.raises(UserModelError, match=r"Model file not found: .*nowhere.py. Check model_path"):
        train(config)


# ------------------------------------------------------------------------------ classification models

def test_classifiers_with_and_without_a_mask_parameter_pass_the_check(tmp_path):
    task = ClassificationTask()
    maskless = build_from(tmp_path / "a", MASKLESS_CLASSIFIER, task="classification", model_template="classifier",
                          dataset_source="file", dataset_path="x.csv")
    check_model(maskless, task, vocab_size=50, max_seq_len=32, num_classes=3)

    calls = []

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 3)

        def forward(self, ids, mask):
            calls.append(mask)
            m = mask.unsqueeze(-1).float()
            return self.head((self.embed(ids) * m).sum(1) / m.sum(1))

    check_model(Masked(), task, vocab_size=50, max_seq_len=32, num_classes=3)
    assert calls[0].dtype == torch.bool and not calls[0][1, -1]  # the padded dummy row reached the model


def test_a_user_classifier_builds_with_num_classes_and_pad_id_from_the_data(tmp_path):
    code = MASKLESS_CLASSIFIER.replace("return Bag(", "assert config['pad_id'] == 7, config\n    return Bag(")
    path = write_model(tmp_path / "mine", code)
    wizard = WizardConfig(task="classification", model_source="file", model_path=str(path),
                          dataset_source="file", dataset_path="x.csv", output_dir=str(tmp_path / "run"))
    model = build_model(wizard, vocab_size=40, num_classes=4, pad_id=7)
    assert model.head.out_features == 4
    with pytest.raises(ValueError, match="needs at least 2 classes, but the data has 1 label names"):
        build_model(wizard, vocab_size=40, num_classes=1)


def test_lm_check_leaves_gradients_and_random_state_alone():
    model = nn.Sequential(nn.Embedding(30, 8), nn.Dropout(0.5), nn.Linear(8, 30))
    state = torch.get_rng_state()
    check_model(model, LanguageModelTask(), vocab_size=30, max_seq_len=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------ Hugging Face models

# Built from a config in the test: nothing is downloaded. transformers is optional for users.
requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install transformers, see requirements-test.txt): the Hugging Face "
           "user-model tests build its model classes")

HF_GPT2 = '''
from transformers import GPT2Config, GPT2LMHeadModel


def build_model(config):
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=config["vocab_size"],
                                      n_positions=config.get("n_positions", config["max_seq_len"]),
                                      bos_token_id=0, eos_token_id=0))
'''

HF_BERT_CLASSIFIER = '''
from transformers import BertConfig, BertForSequenceClassification


def build_model(config):
    return BertForSequenceClassification(BertConfig(
        vocab_size=config["vocab_size"], hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=config["max_seq_len"], num_labels=config["num_classes"],
        pad_token_id=config["pad_id"]))
'''


@requires_transformers
def test_a_hugging_face_gpt2_trains_as_a_model_file_and_exports(tmp_path):
    from utils.export import load_exported

    path = write_model(tmp_path / "mine", HF_GPT2)
    result = train(lm_config(tmp_path, model_source="file", model_path=str(path)))
    assert result.global_step == 3 and result.val_loss is not None and result.val_loss < 10
    assert type(result.model).__name__ == "GPT2LMHeadModel"
    text = result.generate("def ", max_new_tokens=8, seed=0)  # generate unwraps the output's .logits too
    assert text.startswith("def ") and len(text) == 12
    loaded = load_exported(export_result(result))
    assert loaded.generate("def ", max_new_tokens=8, seed=0) == text


@requires_transformers
def test_a_position_table_shorter_than_max_seq_len_is_refused_before_training(tmp_path):
    path = write_model(tmp_path / "mine", HF_GPT2, config={"n_positions": 16})
    with pytest.raises(UserModelError, match=r"has config.max_position_embeddings=16, fewer than max_seq_len=32 "
                                             r"tokens per training sequence. Set max_seq_len <= 16"):
        train(lm_config(tmp_path, model_source="file", model_path=str(path)))
    assert not (tmp_path / "run" / "checkpoints").exists()


@requires_transformers
def test_a_hugging_face_bert_classifier_trains_with_its_attention_mask(tmp_path, toy_classification):
    from tests.conftest import classification_config, fit_classifier

    path = write_model(tmp_path / "mine", HF_BERT_CLASSIFIER)
    config = classification_config(tmp_path, toy_classification, model_source="file", model_path=str(path),
                                   max_steps=6, max_epochs=1)
    trainer, module, _ = fit_classifier(config, toy_classification)
    assert trainer.global_step == 6 and type(module.model).__name__ == "BertForSequenceClassification"
    model = module.model.eval()
    task = ClassificationTask()
    assert task.describe_call(model) == "model(input_ids=input_ids, attention_mask=attention_mask)"
    batch, _ = task.dummy_batch(2, 8, toy_classification.tokenizer.vocab_size, 2)
    ids, mask, _ = batch
    shorter = task.logits(model, (ids[1:, :4], mask[1:, :4], None))  # the padded row without its padding
    assert torch.allclose(task.logits(model, batch)[1:], shorter, atol=1e-5)  # the mask reached the model


def test_keyword_only_forwards_and_dict_outputs_are_understood():
    class KeywordsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(30, 8), nn.Linear(8, 30)

        def forward(self, *, input_ids=None, attention_mask=None):
            return {"logits": self.out(self.embed(input_ids)), "aux": None}

    model = KeywordsOnly()
    assert LanguageModelTask().describe_call(model) == "model(input_ids=input_ids)"
    check_model(model, LanguageModelTask(), vocab_size=30, max_seq_len=8)

    class ReturnsLoss(KeywordsOnly):
        def forward(self, *, input_ids=None, attention_mask=None):
            return (self.out(self.embed(input_ids)).sum(),)

    with pytest.raises(UserModelError, match=r"model\(input_ids=input_ids\) returned tuple; the kit expected logits "
                                             r"of shape \(2, 8, 30\): a tensor, an output with .logits \(Hugging Face\) "
                                             r"or a dict with \"logits\""):
        check_model(ReturnsLoss(), LanguageModelTask(), vocab_size=30, max_seq_len=8)

"""Your own model: a .py file or a GitHub Gist, imported, built and checked before training.

The contract for a model file (model.py), the same a visual transformer builder exports:
    build_model(config: dict) -> nn.Module        preferred, or
    class Model(nn.Module) with __init__(self, config) or __init__(self)
    forward: task "lm"             input_ids (B, T) long -> logits (B, T, vocab_size)
             task "classification" input_ids (B, T) long [, attention_mask (B, T) bool, True = real token]
                                   -> logits (B, num_classes)
    The ids go by position, or as input_ids= when forward() has a parameter of that name (Hugging Face
    models: build_model may return GPT2LMHeadModel(GPT2Config(...)) and the like); the mask goes by
    name. The logits may come back as a tensor, an object with .logits, or a dict with "logits".
`config` is the kit's model config (vocab_size, max_seq_len, size, dropout; num_classes and pad_id
for classification) updated with the keys of a config.json beside model.py. Your keys win, except
that vocab_size, num_classes and pad_id follow the data: a different declared value is an error,
and a declared max_seq_len must cover the run's max_seq_len.

A Gist is fetched as raw files, never through the rate-limited API:
    {base}/{gist_id}/raw/model.py   or, when the user is known,   {base}/{user}/{gist_id}/raw/model.py
(plus config.json when the Gist has one). base is https://gist.github.com unless the base_url
argument or the KIT_GIST_BASE_URL environment variable says otherwise (tests serve Gists from
127.0.0.1). Each file's download gives up after KIT_GIST_TIMEOUT seconds in all (default 60), however
slowly the server keeps sending. The files are kept in output_dir/user_model/, which is also what an export copies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from utils import gist_ref
from utils.errors import KitError
from utils.files import atomic_copy, atomic_write_bytes, atomic_write_text, existing_path
from utils.gist_ref import GistRef  # re-exported: importers of utils.models.user_models keep working

DEFAULT_GIST_BASE_URL = "https://gist.github.com"
GIST_BASE_URL_ENV = "KIT_GIST_BASE_URL"
GIST_TIMEOUT_ENV = "KIT_GIST_TIMEOUT"  # seconds a whole file download may take
DEFAULT_GIST_TIMEOUT = 60.0
MODEL_FILENAME = "model.py"
MODEL_CONFIG_FILENAME = "config.json"
USER_MODEL_DIRNAME = "user_model"  # in output_dir and in an export folder
SOURCE_FILENAME = "source.json"  # in output_dir/user_model: where the files came from
KIT_DIR = Path(__file__).resolve().parent.parent  # utils/: frames here are the kit's, not the user's
DATA_KEYS = ("vocab_size", "num_classes", "pad_id")  # follow the tokenizer and the labels, not config.json
_DATA_SAYS = {"vocab_size": "the tokenizer's vocab_size is", "num_classes": "the data's number of labels is",
              "pad_id": "the tokenizer pads with id"}

CONTRACT = ("a module-level build_model(config: dict) -> nn.Module, or a class Model(nn.Module) "
            "whose __init__ takes the config dict or nothing")
FORWARD_FORMS = ("The kit passes input_ids by position, or as input_ids= when forward() names that parameter "
                 "(Hugging Face models), and attention_mask by name; it takes as logits a tensor, an output "
                 "with .logits (Hugging Face), or a dict with \"logits\".")


class UserModelError(KitError, ValueError):
    """Your model could not be fetched, imported, built or checked; the message says why and what was expected."""


@dataclass(frozen=True)
class UserModelFiles:
    code: Path  # the .py file to import
    config: Optional[Path]  # its config.json, or None
    source: str  # where they came from, for messages


# ---------------------------------------------------------------------------------------- files

def resolve_user_model_files(model_source: str, model_path: str, gist_id: str, output_dir: str | Path,
                             base_url: Optional[str] = None, timeout: float = 20.0) -> UserModelFiles:
    """Find (file) or fetch (gist) the model code.

    A file is imported from where it is (tracebacks then show your path); the training core keeps a
    copy in output_dir/user_model/ (keep_model_copy) once it knows the run can go ahead. A Gist is
    downloaded into output_dir/user_model/ and reused from there, so a resumed run trains the same
    code offline; delete that folder to fetch the Gist again.
    """
    cache = Path(output_dir) / USER_MODEL_DIRNAME
    if model_source == "file":
        return local_model_files(model_path)
    if model_source == "gist":
        return fetch_gist(gist_id, cache, base_url=base_url, timeout=timeout)
    raise ValueError(f"model_source={model_source!r} has no model file; expected 'file' or 'gist'")


def local_model_files(model_path: str | Path) -> UserModelFiles:
    path = existing_path(model_path, "Model file", "model_path", "on Colab, mount Google Drive first for "
                         "/content/drive/... paths, or upload the file", error=UserModelError)
    if path.is_dir():
        path = path / MODEL_FILENAME
        if not path.exists():
            raise UserModelError(f"model_path {path.parent} is a folder without {MODEL_FILENAME}; "
                                 "give the path of your model's .py file.")
    if path.suffix != ".py":
        raise UserModelError(f"model_path {path} is not a .py file; the kit imports Python code defining {CONTRACT}.")
    config = path.with_name(MODEL_CONFIG_FILENAME)
    return UserModelFiles(path.resolve(), config.resolve() if config.exists() else None, str(path))


def model_files_in(folder: str | Path) -> UserModelFiles:
    """The model.py (+ config.json) kept in a folder: output_dir/user_model or an export's user_model."""
    folder = Path(folder)
    code = folder / MODEL_FILENAME
    if not code.exists():
        raise UserModelError(f"No {MODEL_FILENAME} in {folder}: the folder should hold the model code the run trained.")
    config = folder / MODEL_CONFIG_FILENAME
    return UserModelFiles(code.resolve(), config.resolve() if config.exists() else None, str(code))


def keep_model_copy(files: UserModelFiles, output_dir: str | Path) -> None:
    """The copy of a model file that the run folder keeps (and an export ships); a Gist is there already."""
    folder = Path(output_dir) / USER_MODEL_DIRNAME
    if files.code.parent != folder.resolve():
        copy_model_files(files, folder, {"model_source": "file", "model_path": str(files.code)})


def copy_model_files(files: UserModelFiles, folder: Path, source: dict) -> UserModelFiles:
    """Copy model.py (+ config.json) into folder, replacing what was there, each file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    code, config = folder / MODEL_FILENAME, folder / MODEL_CONFIG_FILENAME
    if files.code != code.resolve():
        atomic_copy(files.code, code)
    if files.config is None:
        config.unlink(missing_ok=True)  # a config.json left from another model would be read as this one's
    elif files.config != config.resolve():
        atomic_copy(files.config, config)
    atomic_write_text(folder / SOURCE_FILENAME, json.dumps(source, indent=2) + "\n")
    return model_files_in(folder)


# ---------------------------------------------------------------------------------------- gists

def parse_gist_ref(text: str) -> GistRef:
    """A Gist id, user/id, or any Gist URL -> GistRef; UserModelError otherwise (the parsing is in utils.gist_ref)."""
    try:
        return gist_ref.parse_gist_ref(text)
    except ValueError as e:
        raise UserModelError(f"Gist id or URL (gist_id): {e}") from None


def gist_base_url(base_url: Optional[str] = None) -> str:
    return (base_url or os.environ.get(GIST_BASE_URL_ENV) or DEFAULT_GIST_BASE_URL).rstrip("/")


def gist_raw_url(ref: GistRef, filename: str, base_url: Optional[str] = None) -> str:
    owner = f"{ref.user}/" if ref.user else ""  # without a user, gist.github.com redirects to the owner's URL
    return f"{gist_base_url(base_url)}/{owner}{ref.gist_id}/raw/{filename}"


def fetch_gist(gist: str, folder: str | Path, base_url: Optional[str] = None, timeout: float = 20.0) -> UserModelFiles:
    """Download model.py and, when present, config.json from a Gist into folder (reused when already there)."""
    ref = parse_gist_ref(gist)
    folder = Path(folder)
    source = {"model_source": "gist", "gist_id": ref.gist_id}
    if _read_source(folder) == source and (folder / MODEL_FILENAME).exists():
        print(f"Model: Gist {ref.gist_id} from {folder} (downloaded earlier; delete that folder to fetch it again)")
        return model_files_in(folder)
    code = _download(gist_raw_url(ref, MODEL_FILENAME, base_url), timeout, required=True, gist=ref.gist_id)
    config = _download(gist_raw_url(ref, MODEL_CONFIG_FILENAME, base_url), timeout, required=False, gist=ref.gist_id)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MODEL_FILENAME, code)
    if config is None:
        (folder / MODEL_CONFIG_FILENAME).unlink(missing_ok=True)
    else:
        atomic_write_bytes(folder / MODEL_CONFIG_FILENAME, config)
    atomic_write_text(folder / SOURCE_FILENAME, json.dumps(source, indent=2) + "\n")
    print(f"Model: fetched Gist {ref.gist_id} ({MODEL_FILENAME}{' + ' + MODEL_CONFIG_FILENAME if config else ''}) "
          f"into {folder}")
    return model_files_in(folder)


def _download(url: str, timeout: float, required: bool, gist: str) -> Optional[bytes]:
    total = gist_timeout()
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, total)) as response:
            return _read_within(response, url, time.monotonic() + total, total)
    except urllib.error.HTTPError as e:
        if e.code == 404 and not required:
            return None
        if e.code == 404:
            raise UserModelError(f"Gist {gist} has no {MODEL_FILENAME}: {url} answered 404 Not Found. Check gist_id, "
                                 f"and that the Gist holds a file named exactly {MODEL_FILENAME}.") from None
        raise UserModelError(f"Could not fetch {url}: HTTP {e.code} {e.reason}.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserModelError(f"Could not reach {url} ({reason}). Check the internet connection, or set "
                             f"{GIST_BASE_URL_ENV} if Gists are served from elsewhere.") from None


def _read_within(response, url: str, deadline: float, total: float) -> bytes:
    """The body, read as it arrives; a server that trickles it is given up on at the deadline."""
    chunks = []
    try:
        while chunk := response.read1(65536):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                break
        else:
            return b"".join(chunks)
    except TimeoutError:  # no byte for the rest of the time allowed
        pass
    raise UserModelError(f"Downloading {url} took more than {total:g} s ({sum(map(len, chunks))} bytes received): "
                         f"the server is too slow. Try again later, or set {GIST_TIMEOUT_ENV} to allow more seconds.")


def gist_timeout() -> float:
    """Seconds one file download may take in all: KIT_GIST_TIMEOUT, else DEFAULT_GIST_TIMEOUT."""
    raw = os.environ.get(GIST_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_GIST_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserModelError(f"{GIST_TIMEOUT_ENV}={raw!r} is not a number of seconds > 0; unset it for the default "
                             f"{DEFAULT_GIST_TIMEOUT:g} s.")
    return seconds


def _read_source(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / SOURCE_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------- build

def load_user_model(files: UserModelFiles, kit_config: dict) -> nn.Module:
    """Import the model file and build the model from the kit's config merged with its config.json."""
    config = merge_model_config(kit_config, read_model_config(files))
    module = import_model_file(files.code)
    if callable(getattr(module, "build_model", None)):
        entry, call = "build_model(config)", lambda: module.build_model(config)
    elif isinstance(getattr(module, "Model", None), type):
        entry, call = _model_class_call(module.Model, config, files.code)
    else:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise UserModelError(f"{files.source} defines neither build_model nor Model. The kit expected {CONTRACT}. "
                             f"Names it defines: {', '.join(names) or 'none'}.")
    try:
        model = call()
    except SystemExit as e:
        raise UserModelError(_exit_message(e, f"{entry} in {files.source}", "while building the model")) from None
    except Exception as e:
        raise UserModelError(f"{entry} in {files.source} raised an error:\n{user_traceback(e, files.code)}\n"
                             f"The kit called it with config = {config}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{entry} in {files.source} returned {type(model).__name__}; the kit expected a "
                             "torch.nn.Module.")
    return model


def _model_class_call(cls: type, config: dict, path: Path):
    try:
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    except (TypeError, ValueError):  # no readable signature: assume the documented Model(config)
        return "Model(config)", lambda: cls(config)
    if not params:
        return "Model()", lambda: cls()
    required = [p for p in params if p.default is inspect.Parameter.empty]
    if len(required) <= 1 and params[0].kind is not inspect.Parameter.KEYWORD_ONLY:
        return "Model(config)", lambda: cls(config)
    names = [p.name for p in params]
    example = ", ".join(f"config[{n!r}]" for n in names)
    raise UserModelError(f"Model.__init__ in {path} takes ({', '.join(names)}); the kit calls Model(config) with one "
                         "dict or Model() with nothing. Add a build_model(config) function that calls your "
                         f"constructor, e.g. `def build_model(config): return Model({example})`, with the keys "
                         "in config.json.")


def read_model_config(files: UserModelFiles) -> dict:
    if files.config is None:
        return {}
    try:
        data = json.loads(files.config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserModelError(f"{files.config} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise UserModelError(f"{files.config} holds a JSON {type(data).__name__}; the kit expected an object of "
                             "model settings such as {\"n_layer\": 4}.")
    return data


def merge_model_config(kit: dict, user: dict) -> dict:
    """The user's config.json over the kit's model config; data-determined keys must agree."""
    for key in DATA_KEYS:
        if key in user and key in kit and user[key] != kit[key]:
            raise UserModelError(f"config.json declares {key}={user[key]!r} but {_DATA_SAYS[key]} {kit[key]!r}. "
                                 f"The kit sets {key} from the data: remove {key} from config.json, or change the "
                                 "tokenizer or data to match.")
    if "max_seq_len" in user and isinstance(user["max_seq_len"], int) and user["max_seq_len"] < kit["max_seq_len"]:
        raise UserModelError(f"config.json declares max_seq_len={user['max_seq_len']} but the run trains on "
                             f"sequences of {kit['max_seq_len']} tokens: set max_seq_len <= {user['max_seq_len']} "
                             "in the wizard, or raise it in config.json.")
    return {**kit, **user}


def import_model_file(path: Path):
    """Import a .py file under a name unique to its path and contents; errors carry the user's traceback."""
    path = Path(path)
    digest = hashlib.sha1(str(path).encode() + path.read_bytes()).hexdigest()[:12]
    name = f"kit_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, SystemExit):  # a script's exit() would end the kit silently, with its exit code
            raise UserModelError(_exit_message(e, str(path), "while the kit imported it")) from None
        if not isinstance(e, Exception):
            raise
        hint = ""
        if isinstance(e, ModuleNotFoundError) and (path.parent / f"{e.name}.py").exists():
            hint = (f"\n{e.name}.py sits beside {path.name}, but the kit imports {path.name} on its own: "
                    "put the code your model needs into that one file.")
        elif isinstance(e, ModuleNotFoundError):
            hint = f"\nIf {e.name!r} is a package, install it first (in Colab: !pip install {e.name})."
        raise UserModelError(f"Importing {path} failed:\n{user_traceback(e, path)}{hint}\n"
                             f"The kit expected a Python file defining {CONTRACT}.") from None
    return module


def _exit_message(error: SystemExit, where: str, when: str) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    line = f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""
    return (f"{where} called sys.exit({error.code!r}){line} {when}, which would end training with nothing said. "
            "Keep script code under `if __name__ == \"__main__\":`, so importing the file only defines the model.")


def user_traceback(error: BaseException, path: Optional[Path]) -> str:
    """The traceback from the first frame in the user's file on; without one, after the kit's own frames."""
    frames = traceback.extract_tb(error.__traceback__)
    first = next((i for i, f in enumerate(frames) if path and Path(f.filename) == Path(path)), None)
    if first is None:
        kit = [i for i, f in enumerate(frames) if Path(f.filename).is_relative_to(KIT_DIR)
               or "importlib" in f.filename]
        first = kit[-1] + 1 if kit else 0
    lines = traceback.format_list(frames[first:]) + traceback.format_exception_only(type(error), error)
    return ("Traceback (most recent call last):\n" if first < len(frames) else "") + "".join(lines).rstrip()


# ---------------------------------------------------------------------------------------- checks

def check_embedding_fits(model: nn.Module, vocab_size: int) -> None:
    """Fail before training when token ids could index past the model's input embedding.

    On a GPU that mistake is an opaque device-side assert deep inside CUDA. The embedding size is the
    model's `vocab_size` attribute when it declares one, else the rows of its largest nn.Embedding
    (the token embedding is the largest unless positions outnumber tokens; the dummy-batch check in
    check_model catches what this misses).
    """
    declared = getattr(model, "vocab_size", None)
    embedding = _input_embedding(model)
    if isinstance(declared, int):
        rows, what = declared, f"model declares vocab_size={declared}"
    elif embedding is not None:
        rows, what = embedding.num_embeddings, f"model's input embedding has {embedding.num_embeddings} rows"
    else:
        embeddings = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
        if not embeddings:
            return  # no way to tell: the dummy-batch check catches what it can
        rows, what = max(embeddings), f"model's embedding has {max(embeddings)} rows"
    if rows < vocab_size:
        raise UserModelError(f"The tokenizer has {vocab_size} ids but the {what}: token ids "
                             f"{rows}..{vocab_size - 1} would index past it. Build the model with vocab_size="
                             f"{vocab_size} (the kit passes config['vocab_size']), or use a tokenizer with at most "
                             f"{rows} ids.")


def _input_embedding(model: nn.Module) -> Optional[nn.Embedding]:
    """The token embedding a Hugging Face model names (get_input_embeddings), or None."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        embedding = get() if callable(get) else None
    except NotImplementedError:
        return None
    return embedding if isinstance(embedding, nn.Embedding) else None


POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "block_size", "max_seq_len")


def check_positions_fit(model: nn.Module, max_seq_len: int, source: str = "the model") -> None:
    """Fail before training when the model has fewer positions than the run's sequences have tokens.

    The limit is what the model declares (a Hugging Face config's max_position_embeddings or n_positions,
    or an attribute block_size / max_seq_len on the model), else the rows of an nn.Embedding whose name
    says it holds positions (wpe, pos_emb, position_embeddings). The dummy-batch check runs short
    sequences, so without this an index error would come at the first full-length batch.
    """
    limit = _declared_positions(model)
    if limit is None:
        return
    positions, what = limit
    if positions < max_seq_len:
        raise UserModelError(f"{source} has {what}, fewer than max_seq_len={max_seq_len} tokens per training "
                             f"sequence. Set max_seq_len <= {positions}, or build the model with at least "
                             f"{max_seq_len} positions (the kit passes config['max_seq_len']).")


def _declared_positions(model: nn.Module) -> Optional[tuple[int, str]]:
    for owner, prefix in ((getattr(model, "config", None), "config."), (model, "")):
        for name in POSITION_ATTRIBUTES:
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value, f"{prefix}{name}={value}"
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if isinstance(module, nn.Embedding) and (leaf == "wpe" or "pos" in leaf):
            return module.num_embeddings, f"a position embedding {name} of {module.num_embeddings} rows"
    return None


def check_model(model: nn.Module, task, vocab_size: int, max_seq_len: int, num_classes: int = 0,
                source: str = "the model") -> None:
    """Run the model on a dummy batch the way training will: output shape, a loss that backpropagates.

    `task` is a task object (utils.training.module) so the model is called exactly as in training.
    Random state and gradients are left as they were.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise UserModelError(f"{source} has no trainable parameters, so there is nothing to train. The kit expected "
                             "layers assigned as attributes (self.layer = nn.Linear(...)); plain Python lists of "
                             "layers are invisible to PyTorch: use nn.ModuleList.")
    check_embedding_fits(model, vocab_size)
    check_positions_fit(model, max_seq_len, source)
    B, T = 2, min(max_seq_len, 16)
    batch, expected = task.dummy_batch(B, T, vocab_size, num_classes)
    call = task.describe_call(model)
    device = next(model.parameters()).device
    batch = tuple(t.to(device) for t in batch)
    # Eval mode: the check must not move BatchNorm statistics or anything a model keeps while training;
    # output shapes and gradients are the same as in training.
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        try:
            _check_forward_backward(model, task, batch, call, expected, B, T, vocab_size, source)
        finally:
            model.train(was_training)


def _check_forward_backward(model, task, batch, call, expected, B, T, vocab_size, source) -> None:
    try:
        logits = task.logits(model, batch)
    except Exception as e:
        raise UserModelError(f"{source} failed on a dummy batch: {call} with input_ids of shape ({B}, {T}) "
                             f"and ids in [0, {vocab_size}) raised an error:\n"
                             f"{_traceback_for_model(e, model)}\n{FORWARD_FORMS}") from None
    if not isinstance(logits, torch.Tensor):
        raise UserModelError(f"{source}: {call} returned {type(logits).__name__}; the kit expected logits of "
                             f"shape {expected}: a tensor, an output with .logits (Hugging Face) or a dict with "
                             "\"logits\". Return the logits only (no loss, no tuple).")
    if not task.output_fits(tuple(logits.shape), expected):
        padded = " or a larger last dimension (a padded vocabulary)" if len(expected) == 3 else ""
        raise UserModelError(f"{source}: {call} on input_ids of shape ({B}, {T}) returned logits of shape "
                             f"{tuple(logits.shape)}; the kit expected {expected}{padded} ({task.output_meaning}).")
    if not logits.is_floating_point():
        raise UserModelError(f"{source} returned {logits.dtype} logits; the kit expected floating point scores.")
    _check_backward(model, task, batch, source)


def _check_backward(model: nn.Module, task, batch, source: str) -> None:
    try:
        loss, _ = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise UserModelError(f"{source} gives a {loss.item()} loss on a dummy batch; the kit expected a finite "
                                 "loss (check the initialisation and any division or log in forward).")
        loss.backward()
        if not any(p.grad is not None for p in model.parameters()):
            raise UserModelError(f"{source}: the loss does not reach any parameter (no gradients after backward); "
                                 "the kit expected logits computed from the model's own layers, not detached.")
    finally:
        model.zero_grad(set_to_none=True)


def _traceback_for_model(error: BaseException, model: nn.Module) -> str:
    try:
        path = Path(inspect.getsourcefile(type(model)))
    except TypeError:  # a class without a source file
        path = None
    return user_traceback(error, path)

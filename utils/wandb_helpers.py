"""Weights & Biases without a login prompt: find the API key, choose online or offline, name the run.

The key comes from the WANDB_API_KEY environment variable, else (on Colab) from the notebook's
Secrets panel; without one the run logs offline and can be uploaded later with `wandb sync`.
build_wandb_logger starts the WandbLogger a training run logs to, falling back to offline when the
server does not start the run in time. Nothing here calls wandb.login() or input(), and the key is
never printed, returned or saved.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from utils.config import WANDB_MODES
from utils.env import in_colab, read_colab_secret
from utils.errors import KitError
from utils.run_folder.checkpoints import WANDB_ID_FILENAME

if TYPE_CHECKING:  # annotations only
    from torch import nn

    from utils.config import WizardConfig
    from utils.precision import PrecisionDecision

API_KEY_VAR = "WANDB_API_KEY"
INIT_TIMEOUT_VAR = "WANDB_INIT_TIMEOUT"  # wandb's own variable, but wandb reads it only once per process
DEFAULT_INIT_TIMEOUT = 60.0  # seconds; wandb's 90 s plus its retries left a run waiting ~108 s before it died
SYNC_HINT = "upload it later with `wandb sync <output_dir>/wandb/offline-run-*` on a machine logged in to W&B"


class WandbError(KitError, ValueError):
    """A W&B setting (mode, project name, WANDB_INIT_TIMEOUT) that cannot work; the message names the fix."""


@dataclass(frozen=True)
class WandbAuth:
    mode: str  # "online", "offline" or "disabled": what wandb.init gets
    source: str  # where the key came from: "environment", "colab-secrets" or "none"
    message: str  # one line for the user; never contains the key


def resolve_wandb_auth(wandb_mode: str) -> WandbAuth:
    """Decide the W&B mode for config.wandb_mode without ever blocking on a prompt.

    "auto" and "online" go online only with a key; a key found in Colab secrets is put in
    os.environ[WANDB_API_KEY] so wandb.init picks it up without a login.
    """
    if wandb_mode not in WANDB_MODES:
        raise WandbError(f"wandb_mode={wandb_mode!r} is not allowed; choose one of {', '.join(map(repr, WANDB_MODES))}")
    if wandb_mode == "disabled":
        return WandbAuth("disabled", "none", "W&B logging is off (wandb_mode='disabled').")
    if wandb_mode == "offline":
        return WandbAuth("offline", "none", f"W&B logs this run offline (wandb_mode='offline'); {SYNC_HINT}.")
    source, missing = _find_api_key()
    if source is not None:
        where = "the WANDB_API_KEY environment variable" if source == "environment" else "Colab secrets"
        return WandbAuth("online", source, f"W&B logs this run online (API key from {where}).")
    if wandb_mode == "online":
        return WandbAuth("offline", "none", f"W&B: wandb_mode='online' but {missing}, so this run logs offline; "
                                            f"{SYNC_HINT}.")
    return WandbAuth("offline", "none", f"W&B logs this run offline ({missing}); {SYNC_HINT}.")


def _find_api_key() -> tuple[Optional[str], str]:
    """(source, None) when a key is available in os.environ afterwards, else (None, why not)."""
    if os.environ.get(API_KEY_VAR, "").strip():
        return "environment", ""
    if not in_colab():
        return None, "no WANDB_API_KEY in the environment"
    key, why = read_colab_secret(API_KEY_VAR)
    if key is None:
        return None, why
    os.environ[API_KEY_VAR] = key
    return "colab-secrets", ""


def resolve_wandb_init_timeout() -> float:
    """Seconds wandb.init may wait for the W&B server before the run goes offline: WANDB_INIT_TIMEOUT, else 60."""
    raw = os.environ.get(INIT_TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_INIT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0  # refused below, with the value as given
    if not seconds > 0:  # also refuses nan
        raise WandbError(f"{INIT_TIMEOUT_VAR}={raw!r} is not allowed; set it to a number of seconds above 0, "
                         f"or unset it for {DEFAULT_INIT_TIMEOUT:.0f}")
    return seconds


def make_project_name(name: str) -> str:
    """W&B project names here are lowercase words joined by hyphens: 'My Project_1' -> 'my-project-1'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise WandbError(f"W&B project name {name!r} has no letters or digits; use something like 'my-transformer'")
    return slug




def wandb_run_id(output_dir, store: bool = True, fresh: bool = False) -> str:
    """The W&B run id of this run folder: the one stored there, else a new one, stored (atomically) for reruns.

    A resumed run logs into the same W&B run instead of opening one per Run all; a run moved to archive/
    takes its id along, so the new run in the folder gets a new one. store=False: the other processes of a
    multi-device run, which log nothing to W&B, read but never write. fresh=True: a new id even when one is
    stored (wandb keeps an id whose online start failed in use for the rest of the process).
    """
    from utils.files import atomic_write_text

    path = Path(output_dir) / WANDB_ID_FILENAME
    if not fresh and path.is_file() and (stored := path.read_text(encoding="utf-8").strip()):
        return stored
    run_id = uuid.uuid4().hex[:8]  # wandb's own ids are 8 characters of [a-z0-9]
    if store:
        atomic_write_text(path, run_id + "\n")
    return run_id


def make_run_name(model_type: str, now: Optional[datetime] = None) -> str:
    """{model_type}_{YYYYMMDD_HHMMSS}, e.g. gpt_20260315_142501."""
    return f"{model_type}_{(now or datetime.now()).strftime('%Y%m%d_%H%M%S')}"


def model_type_of(model) -> str:
    """The model's class name in lowercase: 'gpt' for the GPT template, 'mymodel' for MyModel."""
    return type(model).__name__.lower()


def build_wandb_config(config, model, decision, vocab_size: int) -> dict:
    """The flat dict a W&B run's config shows: the knobs of the run and the precision in force.

    config: WizardConfig; model: the nn.Module trained; decision: the PrecisionDecision;
    vocab_size: the tokenizer's vocabulary (what the model was built for).
    """
    params = list(model.parameters())  # shared (tied) parameters appear once
    total = sum(p.numel() for p in params)
    device = decision.device
    return {
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "epochs": config.max_epochs,
        "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.gradient_clip_val,
        "model_type": model_type_of(model),
        "vocab_size": vocab_size,
        "max_seq_len": config.max_seq_len,
        "total_params": total,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params_millions": round(total / 1e6, 3),
        "device": device.kind,
        "gpu_name": device.name if device.kind == "cuda" else None,
        "mixed_precision": config.use_mixed_precision,
        "precision": decision.precision,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
    }


@contextmanager
def finish_wandb_on_exit(loggers: list):
    """Finish the W&B run of these loggers when the block ends, failed (exit code 1) or not.

    Lightning's WandbLogger leaves the run open; in a notebook the next training would attach to it.
    """
    try:
        yield
    except BaseException:
        _finish(loggers, exit_code=1)
        raise
    _finish(loggers, exit_code=0)


def _finish(loggers: list, exit_code: int) -> None:
    from pytorch_lightning.loggers import WandbLogger

    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return  # W&B is off: leave alone any run the user started themselves
    import wandb

    if wandb.run is not None:  # WandbLogger logs to the global run
        wandb.finish(exit_code=exit_code)


# ---------------------------------------------------------------------------------------------- starting the run

def build_wandb_logger(config: WizardConfig, decision: PrecisionDecision, model: nn.Module,
                       vocab_size: int) -> WandbLogger:
    """A WandbLogger that never prompts and never stops the training: online only with an API key and a W&B
    server that starts the run within the init timeout, else offline (see utils.wandb_helpers)."""
    auth = resolve_wandb_auth(config.wandb_mode)
    print(auth.message)
    _finish_stale_wandb_run()
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    run_args = dict(project=make_project_name(config.wandb_project),
                    name=config.wandb_run_name or make_run_name(model_type_of(model)),
                    save_dir=config.output_dir, log_model=False,
                    # every rerun of this run folder continues one W&B run; only global rank zero logs to W&B
                    id=wandb_run_id(config.output_dir, store=rank_zero_only.rank == 0),
                    config=build_wandb_config(config, model, decision, vocab_size))
    if auth.mode != "online":
        return _without_anonymous(WandbLogger(mode=auth.mode, **run_args))
    return _start_online_run(run_args)


def _without_anonymous(logger: WandbLogger) -> WandbLogger:
    # Lightning passes anonymous=None to wandb.init, and wandb 0.2x+ answers any value with "The anonymous
    # setting has no effect" on stderr. Left out, wandb uses its default and says nothing.
    logger._wandb_init.pop("anonymous", None)
    return logger


def _start_online_run(run_args: dict) -> WandbLogger:
    """Start the online run now, where a failure can be caught, rather than lazily inside trainer.fit.

    wandb raises CommError when the server refuses the connection, does not answer within init_timeout,
    or rejects the request (a wrong key comes back as a plain CommError too); the run then logs offline.
    """
    import wandb
    from wandb.errors import CommError

    logger = _without_anonymous(WandbLogger(mode="online", settings=wandb.Settings(
        init_timeout=resolve_wandb_init_timeout()), **run_args))
    started = time.monotonic()
    try:
        _ = logger.experiment  # wandb.init
    except CommError as e:  # wandb.run stays None: the run is never made global, so there is nothing to finish
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]  # wandb adds a hint on more lines
        server = wandb.setup().settings.base_url  # the address wandb used: WANDB_BASE_URL or its default
        print(f"W&B: could not start the run on the W&B server at {server} within {time.monotonic() - started:.0f} s "
              f"({reason}); logging this run offline instead; {SYNC_HINT}.")
        # A new id, stored for the reruns: wandb keeps the failed one "in use" for the rest of this process.
        run_args = {**run_args, "id": wandb_run_id(run_args["save_dir"], store=rank_zero_only.rank == 0, fresh=True)}
        return _without_anonymous(WandbLogger(mode="offline", **run_args))
    return logger


def _finish_stale_wandb_run() -> None:
    # WandbLogger would log into a run still open from an earlier notebook cell instead of starting one.
    import wandb

    if wandb.run is not None:
        print(f"W&B: finishing the run {wandb.run.name!r} left open by an earlier cell before starting a new one.")
        wandb.finish()

"""The commands that read a config: train, estimate (and estimate --gpu), inspect."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from utils.cli.common import _config, _print_error, _prog, _reported
from utils.config import WizardConfig, report_unused_settings
from utils.errors import KitError


def run_train(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except KitError as e:  # a bad setting or config file, reported before Lightning takes seconds to load
        return _print_error(e)
    return train_and_report(config, args)

def train_and_report(config: WizardConfig, args: argparse.Namespace) -> int:
    # Imported here, after the settings passed: these modules load torch and Lightning.
    from utils.training import train

    def call():
        result = train(config)
        if result.is_global_zero:  # the other processes of a multi-device run print nothing
            _report(result, args.sample_tokens)

    return _reported(call)

def _report(result, sample_tokens: int) -> None:
    """The summary, the config's path, a sample (language models) and what to run next."""
    task, folder = result.config.task, result.output_dir
    print("\n" + result.summary())
    print(f"config:           {folder / 'config.json'}")
    prompt = _chat_prompt(result) if task == "lm" and result.is_chat_model else None
    if prompt is not None:  # a chat model trained on chat data: its reply to a question from the data, as it comes
        from utils.inference import print_piece

        print(f"\nSample: the reply to the data's first user message, {_shortened(prompt)!r}\n", flush=True)
        result.chat(prompt, sample_tokens, seed=result.config.seed, stream=print_piece)
        print()
    elif task == "lm":
        print("\nSample:\n" + result.generate(max_new_tokens=sample_tokens, seed=result.config.seed))
    print(f"\nNext: {_prog('generate' if task == 'lm' else 'predict')} {folder} ... or {_prog('export')} {folder}")

def _chat_prompt(result) -> str | None:
    """The first user message of the run's chat data (None when the data is plain text, not chat rows)."""
    from utils.data import open_source
    from utils.data.chat import ChatSource
    from utils.data.spec import build_data_spec

    source = open_source(build_data_spec(result.config))
    if not isinstance(source, ChatSource):
        return None
    for _, messages in source.conversations():
        user = next((m["content"] for m in messages if m["role"] == "user"), None)
        if user:
            return user
    return None

def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."

def run_estimate(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except KitError as e:
        return _print_error(e)
    return _reported(lambda: estimate_and_report(config, gpu=args.gpu))

def estimate_and_report(config: WizardConfig, device=None, gpu: str | None = None) -> None:
    """Print the precision decision and the estimate; a batch that does not fit raises train()'s error.
    device: detected when not given (tests inject a DeviceInfo with a small memory). Data caches and a
    copied model file go to a temporary folder, so an existing run in output_dir is never touched."""
    from utils.env import detect_device
    from utils.training.builder import check_strategy
    from utils.training.estimate import estimate_config
    from utils.precision import resolve_precision

    config = config.validate()
    report_unused_settings(config)
    if gpu:
        return report_gpu_verdict(config, gpu)
    if config.model_source == "pretrained" and not _print_fit_plan(config):
        return
    decision = resolve_precision(config.use_mixed_precision, config.precision, device or detect_device(config.devices))
    check_strategy(config, decision.device.kind)  # what train() refuses is refused here too, not timed as if it ran
    print(f"Precision: {decision.precision} - {decision.reason}")
    with tempfile.TemporaryDirectory(prefix="kit-estimate-") as scratch:
        estimate = estimate_config(config.replace(output_dir=scratch), decision, refuse_oversize=True)
    print(estimate.describe())

def report_gpu_verdict(config: WizardConfig, gpu: str) -> None:
    """`estimate --gpu`: the precision that GPU would get and one line on whether the run fits it; a run that does
    not fit raises BatchTooLargeError naming what fits (exit code 2). A pretrained model whose weights are not here,
    or a QLoRA one (4-bit needs the GPU), is answered from its config on the meta device (fit_plan); any other
    model is built here and measured on this CPU in the GPU's autocast dtype."""
    from utils.models.adapters import meta_model
    from utils.formatting import format_bytes
    from utils.training.estimate import memory_on
    from utils.training.fit_plan import GPUS, gpu_verdict, shape_of
    from utils.plan.memory import USABLE_FRACTION
    from utils.precision import resolve_precision

    decision = resolve_precision(config.use_mixed_precision, config.precision, GPUS[gpu])
    print(f"Precision on {decision.device.describe()}: {decision.precision} - {decision.reason}")
    if config.model_source == "pretrained" and (config.finetune_method == "qlora" or not _weights_here(config)):
        shape = shape_of(meta_model(config.pretrained_model, config.task))
        print(gpu_verdict(config.pretrained_model, shape, config, decision))
        return
    with tempfile.TemporaryDirectory(prefix="kit-estimate-") as scratch:
        memory = memory_on(config.replace(output_dir=scratch), decision)
    B, name = config.batch_size, decision.device.name
    print(f"Fits: about {format_bytes(memory.bytes_at(B))} at batch_size={B} x {config.max_seq_len} tokens (measured "
          f"on this machine in {decision.precision}), within {name} ({format_bytes(memory.capacity_bytes)}, "
          f"{USABLE_FRACTION:.0%} usable).")

def _weights_here(config: WizardConfig) -> bool:
    """A local folder with weight files (a Hub name is answered from its config: nothing is downloaded to answer)."""
    folder = Path(config.pretrained_model).expanduser()
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))

def _print_fit_plan(config: WizardConfig) -> bool:
    """Where the pretrained model fits, from its config alone; False when the folder holds a config but no weights
    to time (a published config.json is enough for the answer)."""
    from utils.models.adapters import meta_model
    from utils.training.fit_plan import describe_fit, shape_of

    shape = shape_of(meta_model(config.pretrained_model, config.task))
    print("\n".join(describe_fit(config.pretrained_model, shape, config.batch_size, config.max_seq_len,
                                 config.lora_rank)))
    folder = Path(config.pretrained_model).expanduser()
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        print(f"{folder} holds no weights, so the steps were not timed; the answer above needs only config.json.")
        return False
    return True

def run_inspect(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except KitError as e:
        return _print_error(e)
    codes = []

    def call():
        from utils.inspection import inspect_model

        report = inspect_model(config, on_check=lambda result: print(result.line(), flush=True))
        print("\n".join(line for line in report.lines() if line not in {c.line() for c in report.checks}))
        codes.append(report.exit_code)
    return _reported(call) or codes[0]

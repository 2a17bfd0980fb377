"""The command line for the whole life of a run: train, estimate, export, generate, predict, evaluate, runs.

    python -m utils.training [train] [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training estimate [--gpu t4|l4|a100|h100] [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training inspect [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training export RUN_DIR [--to DIR] [--merged] [--onnx] [--push-to-hub NAME [--public]]
    python -m utils.training export RUN_DIR --gguf [--quant f16|bf16|q8_0|q4_0|q5_1] [--to DIR]
    python -m utils.training generate RUN_DIR_OR_EXPORT [--prompt TEXT | --chat MESSAGE] [--max-new-tokens N]
    python -m utils.training predict RUN_DIR_OR_EXPORT (--text TEXT [--text TEXT ...] | --file FILE)
    python -m utils.training evaluate RUN_DIR_OR_EXPORT --data FILE [--exact-match] [--json FILE]
    python -m utils.training runs PARENT_DIR [--plot [FILE]]

`train` is the command when none is named; `inspect` exits 4 when a check fails. After `pip install -e .` the same commands run as
`colab-kit COMMAND ...`. A problem the user can fix (a KitError) is printed as one line with exit
code 2; anything else is a bug and shows its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Callable

# Only the config here: torch and Lightning load after the settings are checked, so a typo in
# --set is reported in a fraction of a second instead of after seconds of imports.
from utils.config import SETTINGS, WizardConfig, apply_overrides, report_unused_settings
from utils.errors import KitError

GPU_CHOICES = ("t4", "l4", "a100", "h100")  # utils.training.fit_plan.GPUS, named here without importing torch
COMMANDS = ("train", "estimate", "inspect", "export", "generate", "predict", "evaluate", "runs")
ENTRY_POINT = "colab-kit"  # [project.scripts] in pyproject.toml
HELP_COLUMN, HELP_WIDTH = 38, 110  # where a setting's help starts in --help, and where lines wrap
BUG_NOTE = "This looks like a bug in the kit; please report it with the traceback above."


class CommandLineError(KitError, ValueError):
    """A command's own input (a --file of texts) that cannot be used; the message says what to give instead."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other error of the command line."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 2 a problem the message names, 1 a bug, 130 stopped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if command == "train" and argv and not argv[0].startswith("-"):
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              f"(see {_prog()} --help)", file=sys.stderr)
        return 2
    args = PARSERS[command]().parse_args(argv)
    try:
        return RUNNERS[command](args)
    except KeyboardInterrupt:  # Ctrl-C outside training (imports, data, model): training's own stop says more
        print(f"\nStopped (Ctrl-C) before {command} finished." + (
            " Run the same command again to continue: a run resumes from its last checkpoint, when it saved one."
            if command == "train" else ""), flush=True)
        return 130


def _prog(command: str = "") -> str:
    base = ENTRY_POINT if Path(sys.argv[0]).name == ENTRY_POINT else "python -m utils.training"
    return f"{base} {command}".strip()


# ---------------------------------------------------------------------------------------------- train, estimate

def train_parser() -> argparse.ArgumentParser:
    commands = "\n".join("  " + line.replace("python -m utils.training", _prog()).strip()
                         for line in __doc__.splitlines() if line.startswith("    python -m"))
    usage = (f"{_prog()} [train] [--config FILE] [--set KEY=VALUE ...] [--sample-tokens N]\n"
             f"       {_prog()} {{{','.join(COMMANDS[1:])}}} ...")
    parser = _Parser(prog=_prog(), usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=settings_help(),
                     description="Train a model (the default command), or work with a finished run:\n\n"
                                 f"{commands}\n\nEach command has its own --help.")
    _config_arguments(parser)
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of the sample printed at the end")
    return parser


def estimate_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("estimate"), formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=settings_help(),
                     description=textwrap.fill(
                         "Time a few real optimizer steps and print how long the run would take and the memory it "
                         "needs, without training; a batch_size that does not fit is refused as train refuses it, "
                         "naming the batch that fits. Nothing is written into output_dir. With --gpu: whether the "
                         "run fits that GPU, from any machine (a laptop, a CPU runtime): one line, exit code 0 when "
                         "it fits and 2, naming the batch or method that fits, when it does not; a pretrained model "
                         "is answered from its config alone, other models are measured on this CPU in that GPU's "
                         "precision.", HELP_WIDTH))
    parser.add_argument("--gpu", choices=GPU_CHOICES, help="answer for this GPU instead of timing on this machine")
    _config_arguments(parser)
    return parser


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a saved WizardConfig JSON file (the wizard's Save writes one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set max_epochs=1 (repeatable)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The train command's arguments."""
    return train_parser().parse_args(argv)


def settings_help() -> str:
    """Every WizardConfig field as `name=default  help [choices]`, in the dataclass's groups."""
    lines = ["settings (change with --set NAME=VALUE; shown with their defaults):"]
    group = None
    for f in fields(WizardConfig):
        setting = SETTINGS[f.name]
        if setting.group != group:
            group = setting.group
            lines += ["", f"{group}:"]
        left = f"  {f.name}={set_text(f.default)}"
        text = setting.help + (f" [{' | '.join(setting.choices)}]" if setting.choices else "")
        if len(left) > HELP_COLUMN - 2:  # a long default gets a line of its own
            lines.append(left)
            left = ""
        lines.append(textwrap.fill(text, HELP_WIDTH, initial_indent=f"{left:<{HELP_COLUMN}}",
                                   subsequent_indent=" " * HELP_COLUMN))
    return "\n".join(lines)


def set_text(value) -> str:
    """A value as --set takes it: text as written ("" for empty), everything else as JSON."""
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def _config(args: argparse.Namespace) -> WizardConfig:
    config = WizardConfig.load(args.config) if args.config else WizardConfig()
    return apply_overrides(config, args.overrides)


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


# ------------------------------------------------------------------------------------ export, generate, predict

def export_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("export"),
                     description="Write a finished run's model as an export folder: model.safetensors, config.json, "
                                 "tokenizer/ (and labels.json, user_model/). utils.export.load_exported reads it.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (the output_dir training wrote)")
    parser.add_argument("--to", metavar="DIR", help="where to write it (default: RUN_DIR/export); an earlier export "
                                                    "there is replaced, any other non-empty folder is refused")
    parser.add_argument("--merged", action="store_true", help="LoRA/QLoRA runs: the base with the adapter merged "
                                                              "in, 16-bit safetensors that transformers loads alone "
                                                              "(default: the adapter, in peft's format)")
    _checkpoint_argument(parser)
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx and check it with onnxruntime")
    parser.add_argument("--push-to-hub", metavar="NAME",
                        help="upload the folder with a model card to this Hugging Face repository (token: a Colab "
                             "secret or environment variable HF_TOKEN)")
    parser.add_argument("--public", action="store_true",
                        help="with --push-to-hub: a public repository (default: private)")
    parser.add_argument("--gguf", action="store_true",
                        help="instead: one .gguf file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile, "
                             "checked read back (in --to DIR, default RUN_DIR/gguf; needs pip install gguf)")
    parser.add_argument("--quant", metavar="TYPE", help="with --gguf: f16 (default), bf16, q8_0, q4_0 or q5_1 "
                                                        "(k-quants such as Q4_K_M: llama-quantize the f16 file)")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("generate"), description="Sample text from a trained language model (task lm).")
    _model_argument(parser)
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--chat", metavar="MESSAGE", help="a chat model's answer to this user message, formatted with "
                                                         "its chat template (instead of --prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="tokens to sample after the prompt (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="above 0; lower is more predictable (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=40,
                        help="sample from the k likeliest tokens, 0: from all (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="makes the sample repeatable (default: none, a new sample each time)")
    return parser


def predict_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("predict"),
                     description="Label texts with a trained classifier (task classification). Prints one line "
                                 "per text: the label, a tab, the text.")
    _model_argument(parser)
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a text to label (repeatable)")
    texts.add_argument("--file", help="a UTF-8 text file, one text per line (blank lines are skipped)")
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("evaluate"),
                     description="Score a trained model on a file it never saw (.txt, .csv or .jsonl, read with the "
                                 "run's text_column and label_column): loss and perplexity for a language model; "
                                 "accuracy, macro-F1, per-class scores and a confusion matrix (table and PNG) for a "
                                 "classifier. Chat rows (messages, prompt/completion, instruction/output) of a "
                                 "pretrained run are formatted with its chat template and scored as training scores "
                                 "them (train_on: the answers only, or everything).")
    _model_argument(parser)
    parser.add_argument("--data", required=True, metavar="FILE", help="the held-out file to score")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    parser.add_argument("--figure", metavar="FILE", help="a classifier's confusion matrix PNG (default: "
                                                         "RUN_DIR_OR_EXPORT/evaluation/DATA-NAME.confusion.png)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows or texts per forward pass")
    parser.add_argument("--exact-match", action="store_true",
                        help="chat data: also generate each conversation's last answer greedily and report the "
                             "share equal to the file's")
    return parser


def runs_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("runs"),
                     description="List every run folder under PARENT_DIR (archive/ included): task, model, data, "
                                 "steps, best validation, time trained, precision, state, and the settings in "
                                 "which they differ; all read from the run folders themselves.")
    parser.add_argument("parent", metavar="PARENT_DIR", help="a folder holding run folders (or one run folder)")
    parser.add_argument("--plot", nargs="?", const="", metavar="FILE",
                        help="overlay their validation curves in one PNG (default: PARENT_DIR/runs.png)")
    return parser


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_DIR_OR_EXPORT",
                        help="a run folder (its best checkpoint) or an export folder")
    _checkpoint_argument(parser)
    parser.add_argument("--device", default=None,
                        help="where the model runs, e.g. cpu or cuda (default: the GPU when there is one)")


def _checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="of a run folder: the lowest validation loss (default) or the latest")


def run_export(args: argparse.Namespace) -> int:
    def call():
        from utils.loading import load_run

        if args.public and not args.push_to_hub:
            raise CommandLineError("--public only applies with --push-to-hub NAME")
        if args.gguf or args.quant:
            return _export_gguf(args, load_run)
        run = load_run(args.run_dir, args.checkpoint)
        folder = run.export(args.to, args.push_to_hub, args.public, args.onnx, merged=args.merged)
        use = _prog("generate" if run.config.task == "lm" else "predict")
        print(f"Exported {run.checkpoint} to {folder}\n"
              f"Load it with utils.export.load_exported({str(folder)!r}), or run: {use} {folder} ...")
    return _reported(call)


def _export_gguf(args: argparse.Namespace, load_run) -> None:
    from utils.gguf_export import check_quant, export_gguf

    if not args.gguf or args.onnx or args.push_to_hub or args.merged:
        raise CommandLineError("--gguf writes the .gguf file alone and --quant applies only with it; run --onnx, "
                               "--merged or --push-to-hub as a separate export")
    quant = check_quant(args.quant or "f16")  # before the run loads: a k-quant is refused at once
    check = export_gguf(load_run(args.run_dir, args.checkpoint), args.to, quant)
    print(f"{check.describe()}\n{check.next_steps()}")


def run_generate(args: argparse.Namespace) -> int:
    def call():
        model = _load_for(args, "lm", "generate", "predict")
        if args.chat is not None:
            from utils.inference import print_piece

            model.chat(args.chat, args.max_new_tokens, args.temperature, args.top_k or None, args.seed,
                       stream=print_piece)
            print()
            return
        print(model.generate(args.prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.seed))
    return _reported(call)


def run_predict(args: argparse.Namespace) -> int:
    def call():
        texts = args.text or _read_lines(args.file)
        model = _load_for(args, "classification", "predict", "generate")
        for label, text in zip(model.predict(texts), texts):
            print(f"{label}\t{text}")
    return _reported(call)


def run_evaluate(args: argparse.Namespace) -> int:
    def call():
        from utils.evaluate import evaluate_predictor
        from utils.loading import load_predictor

        model = load_predictor(args.model, args.checkpoint, args.device)
        figure = args.figure or Path(args.model) / "evaluation" / f"{Path(args.data).stem}.confusion.png"
        evaluation = evaluate_predictor(model, args.data, args.batch_size,
                                        figure if model.config.task == "classification" else None,
                                        description=str(getattr(model, "checkpoint", None) or args.model),
                                        exact_match=args.exact_match)
        print(evaluation.describe())
        if evaluation.figure:
            print(f"\nConfusion matrix figure: {evaluation.figure}")
        if args.json:
            print(f"Numbers written to {evaluation.save_json(args.json)}")
    return _reported(call)


def run_runs(args: argparse.Namespace) -> int:
    def call():
        from utils.run_list import list_runs, plot_runs

        table = list_runs(args.parent)
        print(table.describe())
        if args.plot is not None:
            print(f"\nValidation curves: {plot_runs(table, args.plot or Path(args.parent) / 'runs.png')}")
    return _reported(call)


def _load_for(args: argparse.Namespace, task: str, command: str, other: str):
    """The run's or export's model, when it was trained for the task this command needs."""
    from utils.inference import InferenceError
    from utils.loading import load_predictor

    model = load_predictor(args.model, args.checkpoint, args.device)
    if model.config.task != task:
        raise InferenceError(f"{command} needs a model trained with task={task!r}, but {args.model} holds one trained "
                             f"with task={model.config.task!r}; use `{_prog(other)} {args.model}` instead")
    return model


def _read_lines(path: str) -> list[str]:
    from utils.errors import MissingFileError

    file = Path(path).expanduser()
    try:
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise MissingFileError(f"No file at {file} (--file): give a text file with one text per line") from None
    except IsADirectoryError:
        raise MissingFileError(f"{file} is a folder (--file): give a text file with one text per line") from None
    except UnicodeDecodeError as e:
        raise CommandLineError(f"{file} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
                       "save it as UTF-8") from None
    if not lines:
        raise CommandLineError(f"{file} holds no text (--file): put one text per line")
    return lines


# ---------------------------------------------------------------------------------------------- errors

def _reported(call: Callable[[], object]) -> int:
    """Run a command's work: 0 when done; a KitError as one line (2); anything else is a bug (1)."""
    from utils.training.callbacks.last_checkpoint import TrainingStopped
    from utils.models.user_models import UserModelError

    try:
        call()
    except TrainingStopped:  # its message is printed already
        return 130
    except UserModelError as e:  # carries the user's own traceback: keep its lines
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KitError as e:
        return _print_error(e)
    except Exception:  # not raised on purpose: a bug, and its traceback is what a report needs
        traceback.print_exc()
        print(BUG_NOTE, file=sys.stderr)
        return 1
    return 0


def _print_error(error: KitError) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("inspect"), formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=settings_help(),
                     description="Check the config's model before training: shapes, causality, padding, initial_loss, "
                                 "gradient_flow, activations, fp16, overfit_batch, memory, attention. Prints a line "
                                 "per check; writes output_dir/inspect/report.json and plots. Exit code 0 when no "
                                 "check fails, 4 when one does.")
    _config_arguments(parser)
    return parser


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


PARSERS = {"train": train_parser, "estimate": estimate_parser, "inspect": inspect_parser, "export": export_parser,
           "generate": generate_parser, "predict": predict_parser, "evaluate": evaluate_parser, "runs": runs_parser}
RUNNERS = {"train": run_train, "estimate": run_estimate, "inspect": run_inspect, "export": run_export,
           "generate": run_generate, "predict": run_predict, "evaluate": run_evaluate, "runs": run_runs}

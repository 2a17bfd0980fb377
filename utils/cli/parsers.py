"""The argument parser of each command, and the settings list every --help ends with."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import fields

from utils.cli.common import COMMANDS, GPU_CHOICES, HELP_COLUMN, HELP_WIDTH, USAGE, _Parser, _prog, set_text
from utils.config import SETTINGS, WizardConfig


def train_parser() -> argparse.ArgumentParser:
    commands = "\n".join("  " + line.replace("python -m utils.training", _prog()).strip()
                         for line in USAGE.splitlines())
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

def inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog("inspect"), formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=settings_help(),
                     description="Check the config's model before training: shapes, causality, padding, initial_loss, "
                                 "gradient_flow, activations, fp16, overfit_batch, memory, attention. Prints a line "
                                 "per check; writes output_dir/inspect/report.json and plots. Exit code 0 when no "
                                 "check fails, 4 when one does.")
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

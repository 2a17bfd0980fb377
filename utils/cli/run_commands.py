"""The commands on a finished run or an export folder: export (safetensors, ONNX, the Hub, GGUF), generate, predict,
evaluate, runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli.common import CommandLineError, _prog, _reported


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

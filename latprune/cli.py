"""The ``latprune`` command: parses arguments, calls the Python API, prints a table or JSON.

With ``--json`` a command prints exactly one JSON object on stdout; progress bars and
logs go to stderr. A ``LatpruneError`` is printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from latprune.errors import LatpruneError

Command = Callable[[argparse.Namespace], dict]
COMMANDS: dict[str, tuple[Command, Callable[[dict], str]]] = {}


def command(name: str, formatter: Callable[[dict], str]):
    """Register ``func(args) -> result dict`` as subcommand ``name`` with a text formatter."""

    def register(func: Command) -> Command:
        COMMANDS[name] = (func, formatter)
        return func

    return register


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- shared options


def add_model_options(parser: argparse.ArgumentParser, pruned: bool = False, required: bool = True) -> None:
    parser.add_argument("--model", required=required and not pruned, metavar="SPEC",
                        help="torchvision:<name>, cifar:resnet20|32|44|56|110 or <module>:<callable>")
    parser.add_argument("--weights", metavar="FILE", help="state dict to load into the model")
    parser.add_argument("--input-shape", metavar="NxCxHxW", help="input shape (default per family)")
    if pruned:
        parser.add_argument("--pruned", metavar="FILE", help="a pruned model saved by latprune")


def model_from_args(args: argparse.Namespace):
    """Load the model the options name: a pruned file, or a spec with optional weights."""
    from latprune.models import load_model, parse_input_shape
    from latprune.pruned_file import load_pruned

    if getattr(args, "pruned", None):
        if args.weights:
            raise LatpruneError("--weights and --pruned exclude each other (a pruned file holds its weights)")
        pruned = load_pruned(args.pruned)
        if args.model and args.model != pruned.spec:
            raise LatpruneError(f"--model {args.model} does not match the pruned file's model {pruned.spec}")
        return pruned
    if not args.model:
        raise LatpruneError("name a model with --model SPEC (or a pruned model with --pruned FILE)")
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, weights=args.weights, input_shape=shape)


def family_of(loaded) -> str:
    return getattr(loaded, "family", None) or getattr(loaded, "base_family")


# ---------------------------------------------------------------- commands


def _format_groups(result: dict) -> str:
    rows = [
        (g["id"], g["width"], g["divisor"], len(g["producers"]), len(g["consumers"]), f"{100 * g['flops_share']:.1f}%")
        for g in result["groups"]
    ]
    text = table(["group", "width", "divisor", "producers", "consumers", "MACs touched"], rows)
    text += f"\n{len(result['groups'])} prunable groups, {result['total_macs'] / 1e6:.1f} M MACs in conv/linear layers"
    if result["excluded"]:
        text += "\nnot prunable:\n" + "\n".join(f"  {e['id']} ({e['width']}): {e['reason']}" for e in result["excluded"])
    return text


@command("groups", _format_groups)
def cmd_groups(args: argparse.Namespace) -> dict:
    """List the model's prunable channel groups."""
    from latprune.groups import find_channel_groups

    loaded = model_from_args(args)
    analysis = find_channel_groups(loaded.model, loaded.example_input())
    return {"model": loaded.spec, "input_shape": list(loaded.input_shape), **analysis.to_json()}


def _format_eval(result: dict) -> str:
    return f"{result['model']}: top-1 {result['top1']:.4f} on {result['images']} images from {result['data']}"


@command("eval", _format_eval)
def cmd_eval(args: argparse.Namespace) -> dict:
    """Top-1 accuracy on an ImageFolder dataset."""
    from torch.utils.data import Subset

    from latprune.data import evaluate_top1, image_folder

    loaded = model_from_args(args)
    dataset = image_folder(args.data, family_of(loaded), loaded.input_shape)
    if args.limit:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    top1 = evaluate_top1(loaded.model, dataset, batch_size=args.batch_size)
    return {"model": loaded.spec, "data": args.data, "images": len(dataset), "top1": top1}


def _format_export(result: dict) -> str:
    return (f"wrote {result['onnx']} (opset {result['opset']}); ONNX Runtime vs PyTorch max abs diff "
            f"{result['max_abs_diff']:.2e}")


@command("export", _format_export)
def cmd_export(args: argparse.Namespace) -> dict:
    """Export to ONNX and check ONNX Runtime's output against PyTorch's."""
    import torch

    from latprune.onnx_export import export_onnx, run_onnx

    loaded = model_from_args(args)
    export_onnx(loaded.model, loaded.input_shape, args.out, opset=args.opset)
    x = loaded.example_input()
    with torch.no_grad():
        reference = loaded.model(x).numpy()
    diff = float(abs(run_onnx(args.out, x) - reference).max())
    return {"model": loaded.spec, "onnx": args.out, "opset": args.opset, "max_abs_diff": diff}


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latprune", description="Latency-aware pruning for CNNs.")
    parser.add_argument("--version", action="version", version=f"latprune {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("groups", help="list prunable channel groups", description=cmd_groups.__doc__)
    add_model_options(p, pruned=True)
    _json_option(p)

    p = sub.add_parser("eval", help="top-1 accuracy on an ImageFolder dataset", description=cmd_eval.__doc__)
    add_model_options(p, pruned=True)
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root (<class>/<image>)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    _json_option(p)

    p = sub.add_parser("export", help="export to ONNX and verify with ONNX Runtime", description=cmd_export.__doc__)
    add_model_options(p, pruned=True)
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--opset", type=int, default=17)
    _json_option(p)
    return parser


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _version() -> str:
    from latprune import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    func, formatter = COMMANDS[args.command]
    try:
        result = func(args)
    except LatpruneError as exc:
        print(f"latprune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latprune {args.command}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else formatter(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

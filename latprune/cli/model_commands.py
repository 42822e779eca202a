"""Commands on one model: its channel groups, its accuracy, its ONNX export, its global sparsity."""

from __future__ import annotations

import argparse

from latprune.cli.options import finite_float, json_option, model_options, output_options, positive_int
from latprune.cli.registry import command
from latprune.cli.requests import dense_model, loaded_model
from latprune.cli.text import table
from latprune.outputs import check_output

SHORT_NOTES = {"not inside a residual branch (no skip connection around it)": "no skip",
               "it sets a residual block's channels (the skip), which stay": "skip channels",
               "its block's shortcut has layers (a projection: stride or channel change)": "projection shortcut"}


def _format_groups(result: dict) -> str:
    notes = result.get("depth_notes", {})
    rows = [(g["id"], g["width"], g["divisor"], len(g["producers"]), len(g["consumers"]), f"{100 * g['flops_share']:.1f}%",
             "removes " + g["branch"] if g.get("branch") else "no: " + SHORT_NOTES.get(notes.get(g["id"], ""),
                                                                                       notes.get(g["id"]) or "?"))
            for g in result["groups"]]
    text = table(["group", "width", "divisor", "producers", "consumers", "MACs touched", "width 0"], rows)
    text += f"\n{len(result['groups'])} prunable groups, {result['total_macs'] / 1e6:.1f} M MACs in conv/linear layers"
    branches = result.get("branches", [])
    if branches:
        text += (f"\n{len(branches)} residual branches can be removed whole (each inner group at width 0, "
                 f"shortcut + constant bias kept; --no-depth to forbid):\n") + "\n".join(
            f"  {b['id']}: {len(b['layers'])} layers, groups {', '.join(b['groups'])}, shortcut {b['shortcut']}"
            for b in branches)
    crossing = [g for g in result["groups"] if g.get("crosses")]
    if crossing:
        text += "\nthrough parameter-free channel ops (rebuilt as index maps when pruned):\n" + "\n".join(
            f"  {g['id']}: {'; '.join(g['crosses'])}" for g in crossing)
    if result["excluded"]:
        text += "\nnot prunable:\n" + "\n".join(f"  {e['id']} ({e['width']}): {e['reason']}" for e in result["excluded"])
    return text


def _groups_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, pruned=True)
    json_option(parser)


@command("groups", "list prunable channel groups", _groups_options, _format_groups)
def cmd_groups(args: argparse.Namespace) -> dict:
    """List the model's prunable channel groups."""
    from latprune import pipeline

    loaded = loaded_model(args)
    return {"model": loaded.spec, "input_shape": list(loaded.input_shape), **pipeline.analyse(loaded).to_json()}


def _eval_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, pruned=True)
    parser.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root (<class>/<image>)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    json_option(parser)


@command("eval", "top-1 accuracy on an ImageFolder dataset", _eval_options,
         lambda r: f"{r['model']}: top-1 {r['top1']:.4f} on {r['images']} images from {r['data']}")
def cmd_eval(args: argparse.Namespace) -> dict:
    """Top-1 accuracy on an ImageFolder dataset."""
    from latprune import pipeline

    loaded = loaded_model(args)
    top1, images = pipeline.evaluate(loaded.model, args.data, loaded.preprocessing, loaded.input_shape,
                                     limit=args.limit, batch_size=args.batch_size)
    return {"model": loaded.spec, "data": args.data, "images": images, "top1": top1}


def _export_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, pruned=True)
    output_options(parser, "FILE.onnx")
    parser.add_argument("--opset", type=positive_int, default=17)
    json_option(parser)


@command("export", "export to ONNX and verify with ONNX Runtime", _export_options,
         lambda r: (f"wrote {r['onnx']} (opset {r['opset']}); ONNX Runtime vs PyTorch max abs diff "
                    f"{r['max_abs_diff']:.2e}"))
def cmd_export(args: argparse.Namespace) -> dict:
    """Export to ONNX and check ONNX Runtime's output against PyTorch's."""
    from latprune import pipeline

    check_output(args.out, [args.weights, args.pruned], args.force)
    loaded = loaded_model(args)
    diff = pipeline.export(loaded.model, loaded.input_shape, args.out, opset=args.opset)
    return {"model": loaded.spec, "onnx": args.out, "opset": args.opset, "max_abs_diff": diff}


def _sparsify_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument("--sparsity", type=finite_float, required=True, metavar="S",
                        help="fraction of weights to zero, [0, 1)")
    output_options(parser, "sparse.pt")
    json_option(parser)


@command("sparsify", "global magnitude sparsity (unstructured)", _sparsify_options,
         lambda r: f"{r['model']}: {100 * r['sparsity']:.1f}% of conv/linear weights zeroed (global magnitude); "
                   f"wrote {r['out']}")
def cmd_sparsify(args: argparse.Namespace) -> dict:
    """Zero the smallest-magnitude weights network-wide (unstructured; shapes unchanged)."""
    from latprune import pipeline
    from latprune.pruned_file import save_pruned
    from latprune.sparsity import weight_sparsity

    check_output(args.out, [args.weights], args.force)
    sparse = pipeline.sparsify(dense_model(args), args.sparsity)
    save_pruned(sparse, args.out)
    return {"model": sparse.spec, "out": args.out, "sparsity": weight_sparsity(sparse.model)}

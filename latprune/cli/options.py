"""Argument types and the option groups several commands share, each defined once.

Nothing here imports torch: ``latprune --help`` builds every parser without loading the stages.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from latprune.defaults import (IMPORTANCE_CALIB_SIZE, IMPORTANCE_CRITERIA, LOOP_MAX_ROUNDS, LOOP_TOL,
                               MIN_SELECTION_IMAGES, OBJECTIVES, RECOVERED_PLANS, RECOVERY_CALIB_SIZE, RECOVERY_METHODS,
                               RECOVERY_SECONDS, SEARCH_SECONDS, SELECTION_IMAGES, UNVERIFIED_MARGIN)

BACKENDS_HELP = "torch-cpu, torch-cuda, ort-cpu or ort-cuda"


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


positive_int = _int_at_least(1)
natural_int = _int_at_least(0)


def comma_list(text: str) -> list[str]:
    """An argparse type: comma-separated names (blanks dropped)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def float_list(text: str) -> list[float]:
    """``0.5,0.5,0.5``: finite numbers separated by commas."""
    return [finite_float(part) for part in comma_list(text)]


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def model_options(parser: argparse.ArgumentParser, pruned: bool = False, required: bool = True) -> None:
    parser.add_argument("--model", required=required and not pruned, metavar="SPEC",
                        help="torchvision:<name>, cifar:resnet20|32|44|56|110 or <module>:<callable>")
    parser.add_argument("--weights", metavar="FILE", help="state dict to load into the model")
    parser.add_argument("--input-shape", metavar="NxCxHxW", help="input shape (default per family)")
    preprocessing = parser.add_argument_group("image preprocessing (default: the model's latprune_preprocessing, "
                                              "else its family's)")
    preprocessing.add_argument("--mean", type=float_list, metavar="M,M,M",
                               help="per-channel mean subtracted from pixels in [0, 1]")
    preprocessing.add_argument("--std", type=float_list, metavar="S,S,S", help="per-channel divisor after the mean")
    preprocessing.add_argument("--resize", type=positive_int, metavar="PIXELS",
                               help="shorter side before the centre crop to the input size (default input / 0.875)")
    if pruned:
        parser.add_argument("--pruned", metavar="FILE", help="a pruned model saved by latprune")


def backend_options(parser: argparse.ArgumentParser, default: str | None = None, warmup: bool = True) -> None:
    if default is None:
        parser.add_argument("--backend", required=True, help=BACKENDS_HELP)
    else:
        parser.add_argument("--backend", default=default, help=f"{BACKENDS_HELP} (default {default})")
    parser.add_argument("--threads", type=positive_int, help="intra-op threads (default: physical cores)")
    if warmup:
        parser.add_argument("--global-warmup", type=finite_float, default=5.0, metavar="SECONDS",
                            help="steady load before timing starts (default 5)")


def budget_options(parser: argparse.ArgumentParser, required: bool) -> None:
    budget = parser.add_mutually_exclusive_group(required=required)
    budget.add_argument("--budget-ms", type=finite_float, metavar="MS",
                        help="latency budget in milliseconds, met as measured on this device (as predicted with "
                             "--no-verify or another device's profile)")
    budget.add_argument("--speedup", type=finite_float, metavar="S",
                        help="budget = dense latency / S (planned on the predicted dense latency, judged against "
                             "the dense model measured in the same rounds)")
    parser.add_argument("--margin", type=finite_float,
                        help=f"plan to budget/(1+margin), headroom for measurement noise (default 0, or "
                             f"{UNVERIFIED_MARGIN:g} with --no-verify)")
    verify_options(parser)


def verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the closed loop: trust the performance model instead of measuring the plan")
    loop_options(parser)


def loop_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tol", type=finite_float, default=LOOP_TOL, metavar="FRACTION",
                        help=f"the closed loop stops when measured latency lies in [(1 - tol) x budget, budget] "
                             f"(default {LOOP_TOL})")
    parser.add_argument("--verify-rounds", type=positive_int, default=LOOP_MAX_ROUNDS, metavar="N",
                        help=f"most plans the closed loop measures (default {LOOP_MAX_ROUNDS})")


def calib_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib", metavar="DIR", help="unlabeled calibration images (any folder layout)")
    parser.add_argument("--calib-size", type=positive_int, metavar="N",
                        help=f"calibration images (default {IMPORTANCE_CALIB_SIZE} for planning: importance and "
                             f"the calibrated search score the first {IMPORTANCE_CALIB_SIZE}, its finalists are "
                             f"repaired on up to {RECOVERY_CALIB_SIZE}, and from {RECOVERY_CALIB_SIZE} + "
                             f"{MIN_SELECTION_IMAGES} on, the best of each plan structure is recovered (by two-stage; "
                             f"`run`: by its recipe's post-training steps) on the first {RECOVERY_CALIB_SIZE} and "
                             f"scored on up to {SELECTION_IMAGES} after them; {RECOVERY_CALIB_SIZE} for recovery, "
                             f"and `run` reads up to {SELECTION_IMAGES} more for its planner; all of them for "
                             f"fine-tuning)")


def importance_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--importance", choices=IMPORTANCE_CRITERIA,
                        help="channel importance (default: taylor with --calib, l2 without; taylor and sensitivity "
                             "need --calib)")


def planning_options(parser: argparse.ArgumentParser) -> None:
    """How widths are chosen: importance, calibration images, the width grid, held groups, depth."""
    importance_option(parser)
    calib_options(parser)
    parser.add_argument("--widths", choices=("aligned", "any"), default="aligned",
                        help="multiples of the alignment step (default) or any width")
    parser.add_argument("--step", type=positive_int, help="alignment step (default: the profile's detected step)")
    parser.add_argument("--min-width", type=finite_float, default=0.1, metavar="FRACTION",
                        help="narrowest width per group as a fraction (default 0.1)")
    parser.add_argument("--hold", type=comma_list, metavar="GROUPS",
                        help="comma-separated group ids to keep at full width; 'channel-ops' holds every group "
                             "that crosses a parameter-free channel op (e.g. the residual streams of cifar ResNets)")
    depth_option(parser)


def depth_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-depth", action="store_true",
                        help="never remove a residual branch whole (by default a branch's inner groups may go to "
                             "width 0 where `latprune groups` shows they can)")


def objective_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objective", choices=OBJECTIVES,
                        help="what the latency planner maximises: summed channel importance, or calibrated: "
                             "measured per-group damage, searched on the calibration loss of whole pruned networks "
                             "(needs --calib; default calibrated with --calib, importance without)")
    parser.add_argument("--search-seconds", type=finite_float, default=SEARCH_SECONDS, metavar="S",
                        help=f"time box of the calibrated search, for each family of plans (depth and width, "
                             f"depth only, width only; default {SEARCH_SECONDS:g}; re-plans in the verification "
                             f"loop get a quarter, and one within 5%% of the last plan's target re-solves the last "
                             f"choice instead); repairing its finalists starts no more plans after as long "
                             f"as the families' boxes together (two plans at least)")
    parser.add_argument("--recovered-plans", type=natural_int, default=RECOVERED_PLANS, metavar="N",
                        help=f"the calibrated search's last stage recovers (two-stage; `run`: its recipe's "
                             f"post-training steps) the best plan of each of the N best-repairing structures "
                             f"(depth only, depth and width, width only) and keeps the one scoring best on images "
                             f"recovery did not fit (default {RECOVERED_PLANS}; 0 or 1: no last stage). It needs "
                             f"{MIN_SELECTION_IMAGES}+ calibration images beyond recovery's and costs a "
                             f"recovery per plan (about 75 s for two-stage on cifar resnet56)")


def recovery_time_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recovery-seconds", type=finite_float, default=RECOVERY_SECONDS, metavar="S",
                        help=f"time box of each training step: two-stage's phases do the steps that fit in half "
                             f"of it each, finetune/overparam the steps that fit in it, decaying their learning "
                             f"rate over those (default {RECOVERY_SECONDS:g}; 0: every epoch, however long)")


def recovery_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--recovery", required=required, default=None if required else "none", metavar="METHOD",
                        help=f"{', '.join(RECOVERY_METHODS)}, or steps joined with + such as two-stage+asr "
                             "(needs --calib; finetune and overparam take labelled --train instead)"
                             + ("" if required else "; default none"))
    parser.add_argument("--train", metavar="DIR",
                        help="labelled images (<class>/<image> folders) for finetune/overparam: cross-entropy is "
                             "added; without labels they distil the dense model")
    parser.add_argument("--epochs", type=positive_int, help="fine-tuning epochs (default 3)")
    parser.add_argument("--lr", type=finite_float,
                        help="fine-tuning learning rate, SGD with cosine decay (default 0.01)")
    parser.add_argument("--batch-size", type=positive_int, help="fine-tuning batch size (default 64)")
    parser.add_argument("--expansion", type=positive_int,
                        help="overparam: width factor inside each expanded layer (default 2)")
    recovery_time_option(parser)


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH|URL", help="profile database: a SQLite file or a postgresql:// server "
                        "URL (default $LATPRUNE_DB or a file in the user cache)")


def output_options(parser: argparse.ArgumentParser, metavar: str, required: bool = True, help: str | None = None,
                   default: str | None = None) -> None:
    parser.add_argument("--out", required=required, metavar=metavar, default=default, help=help)
    parser.add_argument("--force", action="store_true", help="replace an existing output (never one of the inputs)")


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")

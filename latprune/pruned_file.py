"""Save and reload a pruned model as one file.

The file records how to rebuild the architecture (model spec, input shape, kept
channels per group) plus the full state dict, and is read with ``weights_only=True``:
no pickled code. Every field is checked before anything is built, and a ``module:callable``
spec is imported only when the caller names the same spec (a file alone never chooses
which code runs). Reloading rebuilds the base model from its spec, applies the same
channel removal, and loads the weights strictly, so architecture and weights are exact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from latprune import schema
from latprune.analysis import ModelAnalysis, as_analysis
from latprune.errors import LatpruneError
from latprune.models import LoadedModel, apply_state_dict, check_spec_named, load_model, parse_input_shape
from latprune.outputs import atomic_path
from latprune.preprocessing import Preprocessing
from latprune.surgery import prune_channels

FORMAT = "latprune-pruned-model"
FORMAT_VERSION = 1


@dataclass
class PrunedModel:
    """A pruned network with the recipe that rebuilds its architecture."""

    model: nn.Module
    spec: str
    input_shape: tuple[int, ...]
    kept: dict[str, list[int]]
    family: str = "custom"
    metadata: dict = field(default_factory=dict)
    preprocessing: Preprocessing | None = None  # the dense model's (None: the family's default, set when made)

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.for_family(self.family)

    @property
    def widths(self) -> dict[str, int]:
        return {gid: len(idxs) for gid, idxs in self.kept.items()}

    def example_input(self, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=generator)

    def check_made_from(self, spec: str) -> None:
        """Refuse a dense model other than the one this pruned model was made from."""
        _check_made_from(self.spec, spec)


def _check_made_from(made_from: str, spec: str) -> None:
    if spec != made_from:
        raise LatpruneError(f"the pruned model was made from {made_from}, not from {spec}")


def prune_loaded(model: LoadedModel | ModelAnalysis, kept: Mapping[str, Sequence[int]],
                 metadata: dict | None = None, weights_from: nn.Module | None = None) -> PrunedModel:
    """Prune a dense model to ``kept`` channels per group (analysed here unless an analysis is given).

    ``weights_from``: a network of the same architecture whose weights to prune instead of the
    analysed model's (two-stage reconstruction prunes its phase-1 network this way).
    """
    analysis = as_analysis(model)
    loaded = analysis.loaded
    source = weights_from if weights_from is not None else loaded.model
    pruned = prune_channels(source, loaded.example_input(), analysis.groups, kept, layout=analysis.layout,
                            branches=analysis.branches)
    return PrunedModel(
        model=pruned,
        spec=loaded.spec,
        input_shape=loaded.input_shape,
        kept={gid: sorted(int(i) for i in idxs) for gid, idxs in kept.items()},
        family=loaded.family,
        metadata=dict(metadata or {}),
        preprocessing=loaded.preprocessing,
    )


def save_pruned(pruned: PrunedModel, path: str | os.PathLike) -> None:
    """Write ``pruned`` to ``path`` atomically (a partial file never replaces a good one)."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": pruned.spec,
        "input_shape": list(pruned.input_shape),
        "kept": pruned.kept,
        "metadata": pruned.metadata,
        "preprocessing": pruned.preprocessing.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in pruned.model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass(frozen=True)
class SavedPruned:
    """A pruned model file as read, before its network is rebuilt."""

    path: str
    spec: str
    input_shape: tuple[int, ...]
    kept: dict[str, list[int]]
    metadata: dict
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing | None = None  # None: files written before it was recorded (the model's own)

    def check_made_from(self, spec: str) -> None:
        """Refuse a dense model other than the one this pruned model was made from."""
        _check_made_from(self.spec, spec)

    def build(self, base: ModelAnalysis | None = None, named_spec: str | None = None) -> PrunedModel:
        """The pruned network with its saved weights. ``base``: an analysis of the dense architecture at the
        saved input shape to reuse (its weights are replaced); without one, the spec is loaded and analysed,
        which for a ``module:callable`` spec needs the caller to name the same spec (``named_spec``)."""
        if base is None or base.spec != self.spec or tuple(base.input_shape) != self.input_shape:
            check_spec_named(self.spec, named_spec, self.path)
            base = as_analysis(load_model(self.spec, input_shape=self.input_shape))
        pruned = prune_loaded(base, self.kept, self.metadata)
        if self.preprocessing is not None:
            pruned.preprocessing = self.preprocessing
        apply_state_dict(pruned.model, self.state_dict, self.path, f"the pruned {self.spec}")
        pruned.model.eval()
        return pruned


def read_pruned(path: str | os.PathLike) -> SavedPruned:
    """Read and check a file saved by :func:`save_pruned` (``weights_only``: no pickled code) without rebuilding
    it; any missing or mistyped field is one clear error."""
    if not os.path.isfile(path):
        raise LatpruneError(f"pruned model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LatpruneError(f"cannot read pruned model {path}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LatpruneError(f"{path} is not a latprune pruned model (pass plain weights with --weights)")
    source = f"pruned model {path}"
    schema.version(payload.get("version"), source, FORMAT_VERSION)
    missing = [k for k in ("spec", "input_shape", "kept", "state_dict") if k not in payload]
    if missing:
        raise LatpruneError(f"{source} is incomplete: no {', '.join(missing)}")
    kept = {gid: schema.integers(idxs, source, f"kept[{gid!r}]", minimum=0)
            for gid, idxs in schema.mapping(payload["kept"], source, "kept").items()}
    metadata = payload.get("metadata") or {}
    schema.mapping(metadata, source, "metadata")
    state = schema.mapping(payload["state_dict"], source, "state_dict")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LatpruneError(f"{source}: state_dict must hold tensors only")
    preprocessing = (Preprocessing.from_json(payload["preprocessing"], source)
                     if payload.get("preprocessing") is not None else None)
    return SavedPruned(str(path), schema.text(payload["spec"], source, "spec"),
                       schema.input_shape(payload["input_shape"], source), kept, dict(metadata), dict(state),
                       preprocessing)


def load_pruned(path: str | os.PathLike, spec: str | None = None) -> PrunedModel:
    """Rebuild a pruned model saved by :func:`save_pruned`. ``spec``: the model spec the caller names, needed
    when the file's spec is a ``module:callable`` (a file alone never makes latprune import code)."""
    saved = read_pruned(path)
    if spec is not None:
        saved.check_made_from(spec)
    return saved.build(named_spec=spec)


def dense_origin(loaded: LoadedModel) -> dict:
    """What a pruned model records of the dense model it was made from: its weights file and their hash, or,
    for a ``module:callable`` factory that supplies its own weights (pre-trained ones from a package), the hash
    of the weights it built. A built-in spec without a weights file is randomly initialised: nothing to record."""
    if loaded.weights is not None:
        return {"weights": loaded.weights, "sha256": file_sha256(loaded.weights)}
    if loaded.family == "custom":
        return {"weights": None, "sha256": None, "factory_sha256": state_sha256(loaded.model)}
    return {"weights": None, "sha256": None}


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dense_for(pruned: PrunedModel | SavedPruned, spec: str, weights: str | None, input_shape: str | None = None
                   ) -> LoadedModel:
    """The dense model a pruned model was made from, as the reference recovery repairs toward.

    Without ``weights``, the weights file the pruned model records (when it still holds the same
    bytes), or the weights its ``module:callable`` factory builds (when they hash as recorded); a
    pruned model made from randomly initialised weights, or one that records nothing, is refused:
    repairing toward a freshly initialised network would destroy it.
    """
    pruned.check_made_from(spec)
    origin = pruned.metadata.get("dense") or {}
    recorded, digest, built = ((origin.get("weights"), origin.get("sha256"), origin.get("factory_sha256"))
                               if isinstance(origin, dict) else (None, None, None))
    if not all(v is None or isinstance(v, str) for v in (recorded, digest, built)):
        raise LatpruneError("the pruned file's record of its dense weights is malformed; pass them with --weights FILE")
    if weights is None and recorded:
        if not os.path.isfile(recorded) or file_sha256(recorded) != digest:
            raise LatpruneError(f"the dense weights the pruned model was made from ({recorded}) are missing or "
                                f"changed; pass them with --weights FILE")
        weights = recorded
    elif weights is None and not built:
        raise LatpruneError(f"recovery needs the dense weights the pruned model was made from: pass --weights "
                            f"FILE (the pruned file records {'random initial weights' if origin else 'none'})")
    elif weights is not None and digest and file_sha256(weights) != digest:
        raise LatpruneError(f"--weights {weights} are not the weights the pruned model was made from ({recorded}, "
                            f"sha256 {digest[:12]}...)")
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    loaded = load_model(spec, weights=weights, input_shape=tuple(input_shape or pruned.input_shape))
    if built and state_sha256(loaded.model) != built:
        source = f"--weights {weights}" if weights else f"the factory {spec}"
        raise LatpruneError(f"{source} gives weights other than the ones the pruned model was made from (state "
                            f"sha256 {built[:12]}...); pass those with --weights FILE")
    return loaded

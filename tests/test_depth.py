"""Depth as a width (#25): removable residual branches, their surgery, planning with width 0, and files."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune import pipeline
from latprune.analysis import analyse
from latprune.branches import REMOVED_SUFFIX
from latprune.channels import masked_mismatch
from latprune.errors import LatpruneError
from latprune.models import LoadedModel, load_model
from latprune.network import run_model
from latprune.planner.plan import Plan
from latprune.planner.problem import LayerTerm, PlanningProblem
from latprune.planner.solver import solve
from latprune.pruned_file import load_pruned, prune_loaded, save_pruned


def _analysed(spec: str, shape=(1, 3, 64, 64)):
    torch.manual_seed(0)
    return analyse(load_model(spec, input_shape=shape))


def _removable(analysis) -> dict[str, str]:
    return {g.id: g.branch for g in analysis.groups if g.branch}


@pytest.mark.parametrize("spec, shape, branches, groups_each", [
    ("cifar:resnet20", (1, 3, 32, 32), 9, 1),  # identity and option-A pad shortcuts
    ("torchvision:resnet18", (1, 3, 64, 64), 5, 1),  # 3 of 8 blocks have a projection shortcut
    ("torchvision:resnet50", (1, 3, 64, 64), 12, 2),  # bottlenecks: two inner groups each
    ("torchvision:mobilenet_v2", (1, 3, 64, 64), 10, 1),  # inverted residuals with a skip
    ("torchvision:efficientnet_b0", (1, 3, 64, 64), 9, 2),  # expansion + squeeze-excitation groups
    ("torchvision:regnet_y_400mf", (1, 3, 64, 64), 12, 3),  # grouped bottleneck + squeeze-excitation
])
def test_removable_branches_per_architecture(spec, shape, branches, groups_each):
    analysis = _analysed(spec, shape)
    assert len(analysis.branches) == branches
    assert all(len(b.groups) == groups_each for b in analysis.branches)
    assert all(b.id.endswith(REMOVED_SUFFIX) and b.id in analysis.branch_layers for b in analysis.branches)
    # every group says whether it can go to 0, and why not
    for g in analysis.groups:
        assert bool(g.branch) != bool(analysis.depth_notes[g.id])
    if spec.startswith("torchvision:resnet"):
        assert any("projection" in n for n in analysis.depth_notes.values())
    assert any("skip" in n for n in analysis.depth_notes.values())


class _Chain(nn.Module):
    """No skip anywhere, then a block whose branch adds a spatial pattern: neither can go."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 8, 1)
        self.pattern = nn.Parameter(torch.randn(1, 8, 16, 16))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.a(x))))
        x = x + (self.out(F.relu(self.bn(self.inner(x)))) + self.pattern)
        return self.fc(x.mean((2, 3)))


def test_a_branch_whose_output_is_not_constant_is_not_removable():
    analysis = analyse(LoadedModel(_Chain(), "test:chain", "custom", (1, 3, 16, 16)))
    assert analysis.branches == ()
    assert analysis.depth_notes["a"].startswith("not inside a residual branch")
    assert "not constant" in analysis.depth_notes["inner"]


@pytest.mark.parametrize("spec, shape", [("cifar:resnet20", (1, 3, 32, 32)), ("torchvision:resnet50", (1, 3, 64, 64)),
                                         ("torchvision:efficientnet_b0", (1, 3, 64, 64))])
def test_removed_branches_are_gone_and_exact_against_the_masked_dense_model(spec, shape, calib):
    analysis = _analysed(spec, shape)
    if spec.startswith("cifar"):
        from conftest import trained_like

        trained_like(analysis.loaded, calib)
    chosen = analysis.branches[::2]
    gone = {gid for b in chosen for gid in b.groups}
    kept = {g.id: [] if g.id in gone else list(range(0, g.width, 2)) for g in analysis.groups}
    pruned = prune_loaded(analysis, kept).model
    names = {n for n, _ in pruned.named_modules()}
    for branch in chosen:
        assert branch.id in names
        assert not set(branch.layers) & names
    # only the blocks are rewritten: the network and its stages keep their types (hooks on a stage still fire)
    assert type(pruned) is type(analysis.model)
    stages = {n for n, _ in analysis.model.named_children()}
    assert {n: type(m) for n, m in pruned.named_children() if n in stages} == \
        {n: type(m) for n, m in analysis.model.named_children()}
    removed = {g.id: [i for i in range(g.width) if i not in kept[g.id]] for g in analysis.groups}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    assert masked_mismatch(pruned, analysis.model, analysis.layout, removed, x) is None


class _SamePaddingConv(nn.Conv2d):
    """A convolution subclass with its padding built into forward (as EfficientNet-Lite's packages write it)."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _RateBlock(nn.Module):
    """An inverted residual whose forward branches on an argument (a drop-connect rate): fx traces it only
    within its parent."""

    def __init__(self, channels: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, 4 * channels, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(4 * channels)
        self.depthwise = _SamePaddingConv(4 * channels, 4 * channels, 3, groups=4 * channels, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * channels)
        self.project = nn.Conv2d(4 * channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x, rate=None):
        y = F.relu6(self.bn1(self.depthwise(F.relu6(self.bn0(self.expand(x))))))
        y = self.bn2(self.project(y))
        if rate:
            y = F.dropout(y, rate, self.training)
        return y + x


class _RateNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _SamePaddingConv(3, 8, 3, bias=False)
        self.blocks = nn.ModuleList([_RateBlock(8), _RateBlock(8)])
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rate=0.1 * i)
        return self.fc(x.mean((2, 3)))


def test_branches_of_blocks_traced_only_within_their_parent_are_found_and_removed_exactly():
    torch.manual_seed(0)
    model = _RateNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.bias.data.uniform_(-1, 1)
    analysis = analyse(LoadedModel(model, "test:rate", "custom", (1, 3, 16, 16)))
    assert len(analysis.branches) == 2
    chosen = analysis.branches[1]
    kept = {g.id: [] if g.id in chosen.groups else list(range(g.width)) for g in analysis.groups}
    pruned = prune_loaded(analysis, kept).model
    names = {n for n, _ in pruned.named_modules()}
    assert chosen.id in names and not set(chosen.layers) & names
    removed = {g.id: [i for i in range(g.width) if i not in kept[g.id]] for g in analysis.groups}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert masked_mismatch(pruned, analysis.model, analysis.layout, removed, x) is None


def test_a_half_removed_bottleneck_is_refused():
    analysis = _analysed("torchvision:resnet50")
    branch = analysis.branches[0]
    kept = {branch.groups[0]: []}
    with pytest.raises(LatpruneError, match="must be 0 too"):
        prune_loaded(analysis, kept)


def test_onnx_export_of_a_network_with_removed_branches_matches_and_drops_their_operators(resnet20, tmp_path):
    import onnx

    analysis = analyse(resnet20)
    chosen = analysis.branches[:4]
    kept = {gid: [] for b in chosen for gid in b.groups}
    pruned = prune_loaded(analysis, kept).model
    path = tmp_path / "p.onnx"
    diff = pipeline.export(pruned, resnet20.input_shape, path)
    assert diff < 1e-4
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    dense_convs = sum(isinstance(m, nn.Conv2d) for m in resnet20.model.modules())
    assert len(convs) == dense_convs - 2 * len(chosen) + len(chosen)  # two convs out, one bias layer in, per branch


def test_pruned_file_records_removed_branches_and_reloads_exactly(resnet20, tmp_path):
    analysis = analyse(resnet20)
    kept = {g.id: list(range(0, g.width, 2)) for g in analysis.groups}
    kept.update({gid: [] for gid in analysis.branches[1].groups})
    pruned = prune_loaded(analysis, kept)
    path = tmp_path / "p.pt"
    save_pruned(pruned, path)
    again = load_pruned(path)
    assert again.kept[analysis.branches[1].groups[0]] == []
    x = resnet20.example_input()
    assert torch.equal(run_model(again.model, x), run_model(pruned.model, x))


def _toy_problem(values_seed: int) -> PlanningProblem:
    """A hub (0) with a two-group bottleneck branch (1, 2) and a one-group branch (3); both branches have a
    bias layer gated on their first group. Costs: a fixed per-layer cost plus cin * cout."""
    candidates = [np.array([8, 16]), np.array([0, 4, 8]), np.array([0, 4, 8]), np.array([0, 6, 12])]
    rng = np.random.default_rng(values_seed)
    values = [np.concatenate([[0.0], np.sort(rng.random(len(c) - 1)).cumsum()]) if c[0] == 0
              else np.sort(rng.random(len(c))).cumsum() for c in candidates]
    layers = [
        LayerTerm("a", (0,), 0, 1, 0), LayerTerm("b", (1,), 0, 2, 0), LayerTerm("c", (2,), 0, 0, 0),
        LayerTerm("bias1", (0,), 0, 0, 0, depthwise=True, gate=1),
        LayerTerm("d", (0,), 0, 3, 0), LayerTerm("e", (3,), 0, 0, 0),
        LayerTerm("bias2", (0,), 0, 0, 0, depthwise=True, gate=3),
        LayerTerm("head", (0,), 0, None, 10),
    ]

    def cost(rows):
        return np.array([0.5 + 0.01 * cin * cout if layers[i].gate is None else 0.2 + 0.001 * cin
                         for i, cin, cout in rows])

    return PlanningProblem(["hub", "b1", "b2", "single"], candidates, values, layers, cost, constant=0.3,
                           together=[(1, 2)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_with_width_zero_matches_brute_force(seed):
    problem = _toy_problem(seed)
    every = list(itertools.product(*(range(len(c)) for c in problem.candidates)))
    costs = {choice: problem.total_cost(choice) for choice in every}
    assert any(np.isinf(c) for c in costs.values())  # half-removed bottlenecks are no plan
    finite = sorted({round(c, 9) for c in costs.values() if np.isfinite(c)})
    for budget in [(a + b) / 2 for a, b in zip(finite, finite[1:])]:  # between plans' costs: no rounding ties
        best = max((problem.total_value(c) for c in every if costs[c] <= budget), default=None)
        solution = solve(problem, float(budget), bins=4000)
        assert solution.cost <= budget + 1e-9
        assert solution.value == pytest.approx(best, abs=1e-9)
        widths = problem.widths(solution.choice)
        assert (widths[1] == 0) == (widths[2] == 0)


def test_removing_a_branch_removes_its_layers_cost_and_adds_its_bias_layer():
    problem = _toy_problem(0)
    kept_branch = problem.cost_of_widths([16, 8, 8, 12])
    removed = problem.cost_of_widths([16, 0, 0, 12])
    layer = 0.5 + 0.01 * 16 * 8
    assert removed == pytest.approx(kept_branch - 2 * layer - (0.5 + 0.01 * 8 * 8) + 0.2 + 0.001 * 16)
    assert problem.cost_of_widths([16, 0, 8, 12]) == float("inf")


def test_planning_removes_branches_only_with_depth(resnet20):
    analysis = analyse(resnet20)
    assert pipeline.PlanSettings().depth
    inputs, flat = pipeline_inputs(analysis, depth=True), pipeline_inputs(analysis, depth=False)
    # value only on the residual streams: removing a branch loses nothing, so a tight budget takes it
    hubs = {g.id for g in analysis.groups if not g.branch}
    values = [np.asarray(c, dtype=float) if g.id in hubs else np.zeros(len(c))
              for g, c in zip(analysis.groups, inputs.macs.candidates)]
    deep = inputs.macs.with_values(values)
    dense = deep.cost_of_widths(inputs.full_widths)
    chosen = deep.widths(solve(deep, 0.5 * dense).choice)
    assert chosen.count(0) == len(analysis.branches)  # every branch goes before any residual channel
    assert all(w == g.width for w, g in zip(chosen, analysis.groups) if g.id in hubs)
    shallow = flat.macs.widths(solve(flat.macs, 0.5 * dense).choice)
    assert 0 not in shallow


def pipeline_inputs(analysis, depth: bool):
    from latprune.planner.api import prepare
    from latprune.planner.widths import WidthPolicy

    return prepare(analysis, policy=WidthPolicy(step=8, depth=depth))


def test_plan_files_record_removed_branches_and_check_them(profiled, tmp_path):
    from latprune.planner.api import build_plan, prepare

    analysis = profiled.analysis
    inputs = prepare(analysis, perf=profiled.perf, backend="synthetic")
    gone = {gid for b in analysis.branches[1::3] for gid in b.groups}
    widths = [0 if g.id in gone else w for g, w in zip(analysis.groups, inputs.full_widths)]
    plan = build_plan(inputs, widths, "latency-dp", None)
    assert plan.removed == [b.id for b in analysis.branches[1::3]]
    assert plan.predicted_ms < plan.dense_predicted_ms
    assert all(plan.widths()[gid] == 0 for b in analysis.branches if b.id in plan.removed for gid in b.groups)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again.removed == plan.removed and again.widths() == plan.widths()
    again.check_groups(analysis.groups)
    pruned = pipeline.prune(analysis, again)
    names = {n for n, _ in pruned.model.named_modules()}
    assert set(plan.removed) <= names
    # the prediction the plan records is the performance model's for the network actually built
    signatures = list(pipeline_signatures(analysis, pruned.model))
    assert profiled.perf.predict(analysis.key, signatures) == pytest.approx(plan.predicted_ms, rel=1e-9)
    # a plan file that removes half of nothing: a group that cannot go to 0 at width 0
    data = json.loads(path.read_text())
    hub = next(g for g in data["groups"] if not next(x for x in analysis.groups if x.id == g["id"]).branch)
    hub["width"], hub["kept"] = 0, []
    path.write_text(json.dumps(data))
    with pytest.raises(LatpruneError, match="this group is in none"):
        Plan.load(path).check_groups(analysis.groups)


def pipeline_signatures(analysis, model):
    from latprune.network.tracing import layer_signatures

    return layer_signatures(model, analysis.layers_of(model), analysis.input_shape[0], "synthetic").values()


def test_the_profile_times_branch_removed_variants(profiled):
    from latprune.profiler.api import ProfileStore

    with ProfileStore(profiled.db, readonly=True) as store:
        device_id = store.find_device(store.summaries()[0].fingerprint)
        rows = store.network_timings(device_id, "synthetic", profiled.analysis.key)
    removed_rows = [r for r in rows if 0 in r.widths.values()]
    assert removed_rows
    assert any(name.endswith(REMOVED_SUFFIX) for r in removed_rows for name in r.layer_signatures)


def test_recovery_runs_on_a_network_with_removed_branches(resnet20, calib):
    from latprune.recovery import recover

    analysis = analyse(resnet20)
    kept = {g.id: list(range(g.width)) for g in analysis.groups}
    kept.update({gid: [] for b in analysis.branches[::3] for gid in b.groups})
    pruned = prune_loaded(analysis, kept)
    for recipe in ("bn", "two-stage", "asr"):
        recovered, report = recover(analysis, pruned, recipe, calib)
        assert {n for n, _ in recovered.model.named_modules()} >= {b.id for b in analysis.branches[::3]}
        assert np.isfinite(report.error_after)
        if recipe == "two-stage":  # reconstruction fits the remaining layers to the dense outputs
            assert report.error_after < report.error_before
    from latprune.recovery import FinetuneSettings

    tuned, _ = recover(analysis, pruned, "overparam", calib, tuning=FinetuneSettings(epochs=1, batch_size=32))
    x = resnet20.example_input()
    assert run_model(tuned.model, x).shape == run_model(pruned.model, x).shape  # merged back, branches still gone
    assert {b.id for b in analysis.branches[::3]} <= {n for n, _ in tuned.model.named_modules()}

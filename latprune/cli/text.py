"""Plain-text output shared by the commands: aligned tables and the planner's search and verification lines."""

from __future__ import annotations

from collections.abc import Sequence


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


def search_line(search: dict) -> str:
    """One line on the calibrated search (its record's JSON): what it minimised, how long, and the chosen plan vs
    the plain DP."""
    from latprune.planner.records import SearchRecord

    record = SearchRecord.from_json(search, "the plan")
    damage = record.damage
    measured = "cached" if damage.cached else f"measured in {damage.seconds:.1f} s"
    line = (f"search: {record.candidates_scored} plans scored in {record.seconds:.1f} s (damage table "
            f"{measured}); {record.objective}: "
            f"{record.loss_chosen:.4g} chosen ({record.chosen_from}) vs {record.loss_plain_dp:.4g} plain DP")
    if record.finalists:
        scored = ", ".join(f"{f.repaired_loss:.4g} {f.source}" for f in record.finalists)
        line += f"; finalists by {record.final_objective} ({record.final_seconds:.1f} s): {scored}"
        if record.finalists_left_out:
            line += f" ({record.finalists_left_out} more not repaired: the repair's time box was spent)"
    if record.recovered:
        scored = ", ".join(f"{f.recovered_loss:.4g} {f.source}" for f in record.recovered)
        line += f"; recovered by {record.selection_objective}: {scored}"
    if record.structure:
        line += f"; structure {record.structure} (chosen after recovery)"
    return line


def verification_lines(verification: dict) -> list[str]:
    """The closed loop's rounds (its record's JSON) as a table and a verdict (or why the plan was not verified)."""
    if not verification:
        return []
    from latprune.planner.closed_loop import ROUND_COLUMNS, round_cells
    from latprune.planner.records import VerificationRecord

    record = VerificationRecord.from_json(verification, "the plan")
    if not record.verified:
        return [f"not verified on the device: {record.reason or 'unknown'}"]
    low, high = record.band_ms
    return [table(ROUND_COLUMNS, [round_cells(r) for r in record.rounds]),
            f"verified on this device: measured {record.measured_ms:.4g} ms (dense "
            f"{record.dense_measured_ms:.4g} ms, band {low:.4g}-{high:.4g} ms): {record.status}, "
            f"round {record.chosen_round} of {record.rounds_used}, {record.seconds:.1f} s"]

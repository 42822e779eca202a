"""Planner: channel importance, candidate widths, and the budgeted dynamic program that picks widths."""

"""`parallax bench SUITE`: benchmark tables of ratios measured in one run.

Each suite is a module with `run_suite(args) -> list[dict]` rows and `configure(parser)` for its own
options; this module only dispatches and prints. Absolute times are printed only beside a baseline
measured in the same process (see DESIGN.md, Measuring).
"""

from __future__ import annotations

import argparse
import importlib

# suite -> module implementing run_suite(args)
SUITES: dict[str, str] = {
    "kernels": "kernels.bench",
    "model": "backend.model.bench",
    "protocol": "backend.server.bench_protocol",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=[*SUITES, "all"], help="which benchmark table to print")
    parser.add_argument("--quick", action="store_true", help="small sizes only (for CI smoke runs)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    for module_name in SUITES.values():  # each suite may add its own options
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # reported when that suite is run
            continue
        if hasattr(module, "configure"):
            module.configure(parser)


def format_table(rows: list[dict]) -> str:
    """Render rows (dicts with the same keys) as an aligned plain-text table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    names = list(SUITES) if args.suite == "all" else [args.suite]
    for name in names:
        rows = importlib.import_module(SUITES[name]).run_suite(args)
        print(f"\n== parallax bench {name} ==")
        print(format_table(rows))
    return 0

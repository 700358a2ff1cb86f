"""Phase report: the result JSON, its plots and RESULTS.md."""
from __future__ import annotations

from pathlib import Path

from .config import Table1Config
from .layout import write_json
from .markdown import render_markdown
from .plots import plot_results
from .results import build_result
from .runtime import log


def phase_report(cfg: Table1Config) -> dict:
    result = build_result(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plots"] = plot_results(result, out)
    write_json(out, result)
    md = Path(cfg.results_md)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render_markdown(result))
    log(f"report: wrote {out}, {md} and {', '.join(result['plots'].values())}")
    return result

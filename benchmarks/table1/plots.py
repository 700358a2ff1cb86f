"""The two figures next to the result JSON: success vs round, and FedVLA's expert usage per task."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .paper import PAPER


def plot_results(result: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {"success_vs_round": str(out.with_name(out.stem + "_success_vs_round.png")),
             "expert_usage": str(out.with_name(out.stem + "_expert_usage.png"))}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in result["methods"].items():
        curve = m["success_by_round"]
        if curve:
            ax.plot([c["round"] for c in curve], [100 * c["mean_success"] for c in curve], marker="o",
                    label=m["label"], linewidth=2.5 if name == "fedvla" else 1.2)
    for name, paper in PAPER.items():
        ax.axhline(paper["mean"], linestyle=":", linewidth=0.8, color="gray")
        ax.text(0.02, paper["mean"], f"paper {name} {paper['mean']}", fontsize=7, color="gray",
                transform=ax.get_yaxis_transform(), va="bottom")
    ax.set_xlabel("round")
    ax.set_ylabel("mean success over tasks (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Meta-World Table 1: success vs round ({result['config']['name']} config)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(paths["success_vs_round"], dpi=120)
    plt.close(fig)

    usage = result.get("expert_usage", {})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if usage:
        tasks = list(usage)
        matrix = np.array([np.asarray(usage[t]).reshape(-1) for t in tasks])
        n_layers, n_experts = np.asarray(usage[tasks[0]]).shape
        im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, float(matrix.max())))
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xticks(range(matrix.shape[1]), [f"L{l}E{e}" for l in range(n_layers) for e in range(n_experts)],
                      fontsize=6, rotation=90)
        for l in range(1, n_layers):
            ax.axvline(l * n_experts - 0.5, color="white", linewidth=1)
        fig.colorbar(im, ax=ax, label="fraction of tokens routed")
        ax.set_title("FedVLA: expert activation per trunk layer (L) and expert (E), per client/task")
    else:
        ax.text(0.5, 0.5, "no FedVLA evaluation yet", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(paths["expert_usage"], dpi=120)
    plt.close(fig)
    return paths

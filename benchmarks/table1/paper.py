"""The paper's numbers the run is compared with, and the issue's targets."""

#: The paper's Table 1 (Meta-World, average success %), from /work/shared/notes/method.md. Per-task
#: values are given there only for Close Drawer (FedVLA 80.0, centralized 73.3) and Sweep Into (53.3 both).
PAPER = {
    "fedvla": {"mean": 63.3, "per_task": {"drawer-close": 80.0, "sweep-into": 53.3}},
    "centralized": {"mean": 65.0, "per_task": {"drawer-close": 73.3, "sweep-into": 53.3}},
    "fedavg": {"mean": 51.7, "per_task": {}},
}
PAPER_SOURCE = ("FedVLA (arXiv 2508.02190, ICCV 2025) Table 1, as summarised in the project's research notes "
                "(shared/notes/method.md): average success only, plus Close Drawer and Sweep Into")

TARGETS = {"fedvla_mean_min": 0.80, "fedvla_vs_centralized_min": 0.97, "fedvla_minus_fedavg_min": 0.05,
           "active_experts_max": 1.5}

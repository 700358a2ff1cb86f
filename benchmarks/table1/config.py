"""Table1Config: everything one benchmark run does, loaded from a YAML file (benchmarks/configs/)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from .methods import METHODS

ALL_TASKS = ("door-lock", "drawer-close", "sweep-into", "window-open")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class Table1Config:
    """Everything one benchmark run does (loaded from a YAML file; see benchmarks/configs/)."""

    name: str = field(default="full", metadata=_help("Name of this configuration (smoke | full), written into the JSON."))
    tasks: list = field(default_factory=lambda: list(ALL_TASKS), metadata=_help("Meta-World tasks, one client each."))
    methods: list = field(default_factory=lambda: list(METHODS), metadata=_help("Methods to run: " + ", ".join(METHODS)))
    work_dir: str = field(default="data/metaworld_table1", metadata=_help("Demonstrations, runs, snapshots and evals."))
    out: str = field(default="benchmarks/results/metaworld_table1.json",
                     metadata=_help("Result JSON; the plots are written next to it (<stem>_*.png)."))
    results_md: str = field(default="docs/RESULTS.md", metadata=_help("Markdown report generated from the JSON."))
    demos_per_task: int = field(default=50, metadata=_help("Successful scripted-expert demonstrations per task."))
    train_seed_start: int = field(default=1000, metadata=_help("First demonstration seed (consecutive seeds)."))
    record_workers: int = field(default=4, metadata=_help("Recorder worker processes (one sim + renderer each)."))
    record_action_noise: float = field(default=0.0, metadata=_help(
        "Recorder action_noise: std of noise on the executed hand motion, clean expert labels recorded (0 = off)."))
    camera_size: int = field(default=128, metadata=_help("Rendered image side (recording and evaluation), pixels."))
    model: dict = field(default_factory=dict, metadata=_help("FedVLAConfig overrides shared by every method."))
    rounds: int = field(default=10, metadata=_help("Federated rounds per method."))
    local_steps: int = field(default=100, metadata=_help("Optimizer steps per client per round (centralized: x tasks)."))
    batch_size: int = field(default=32, metadata=_help("Client batch size."))
    learning_rate: float = field(default=3e-4, metadata=_help("Client learning rate (AdamW peak)."))
    proximal_mu: float = field(default=0.01, metadata=_help("FedProx proximal coefficient mu."))
    fedpart_layers: int = field(default=1, metadata=_help("FedPart: trunk layers trained and uploaded per round."))
    upload_dtype: str = field(default="float32", metadata=_help("Client upload: float32 weights or float16 deltas."))
    parallel_methods: int = field(default=1, metadata=_help("Method deployments trained at the same time."))
    device: str = field(default="cpu", metadata=_help("Training device: cuda (trainers use the GPU) or cpu (GPU hidden)."))
    trainer_threads: int = field(default=1, metadata=_help("torch/OpenMP threads per trainer process."))
    round_timeout: float = field(default=900.0, metadata=_help("ServerApp: seconds to wait for replies in one round."))
    run_timeout_s: float = field(default=5400.0, metadata=_help("Give up on one method's run after this many seconds."))
    eval_episodes: int = field(default=50, metadata=_help("Evaluation episodes per task for the final round."))
    eval_round_episodes: int = field(default=10, metadata=_help("Evaluation episodes per task for intermediate rounds."))
    eval_every: int = field(default=2, metadata=_help("Evaluate every k-th intermediate round (0 = final round only)."))
    eval_seed_start: int = field(default=0, metadata=_help("First evaluation seed (held out: below train_seed_start)."))
    eval_max_steps: int = field(default=200, metadata=_help("Control steps before an evaluation episode counts as failed."))
    eval_execute_steps: int = field(default=5, metadata=_help("Actions of each chunk executed before re-planning."))
    eval_workers: int = field(default=16, metadata=_help("Evaluation worker processes (one sim + policy cache each)."))
    eval_device: str = field(default="cpu", metadata=_help("torch device of the policies during evaluation."))
    seed: int = field(default=0, metadata=_help("Seed of the initial model and of client sampling."))
    phase_time_budget_s: float = field(default=0.0, metadata=_help(
        "Stop starting new work after this many seconds of a command (0 = no limit); the next command resumes."))

    def __post_init__(self):
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"Table1Config.{name}: {why} (got {getattr(self, name)!r})")

        self.tasks, self.methods = list(self.tasks), list(self.methods)
        need(len(self.tasks) >= 1 and set(self.tasks) <= set(ALL_TASKS) and len(set(self.tasks)) == len(self.tasks),
             "tasks", f"distinct tasks among {ALL_TASKS}")
        need(len(self.methods) >= 1 and set(self.methods) <= set(METHODS), "methods", f"names among {list(METHODS)}")
        for name in ("demos_per_task", "record_workers", "rounds", "local_steps", "batch_size", "parallel_methods",
                     "trainer_threads", "eval_episodes", "eval_round_episodes", "eval_max_steps",
                     "eval_execute_steps", "eval_workers"):
            need(int(getattr(self, name)) >= 1, name, "must be >= 1")
        need(16 <= self.camera_size <= 1024, "camera_size", "must be in [16, 1024]")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.proximal_mu >= 0, "proximal_mu", "must be >= 0")
        need(self.record_action_noise >= 0, "record_action_noise", "must be >= 0")
        need(self.eval_every >= 0, "eval_every", "must be >= 0")
        need(self.upload_dtype in ("float32", "float16"), "upload_dtype", "must be float32 or float16")
        need(self.device in ("cpu", "cuda"), "device", "must be cpu or cuda")
        need(self.eval_device.split(":")[0] in ("cpu", "cuda"), "eval_device", "must be cpu, cuda or cuda:N")
        need(self.round_timeout > 0 and self.run_timeout_s > 0, "round_timeout", "timeouts must be > 0")
        need(self.phase_time_budget_s >= 0, "phase_time_budget_s", "must be >= 0")
        need(self.eval_seed_start >= 0 and self.train_seed_start >= 0, "eval_seed_start", "seeds must be >= 0")
        last_eval = self.eval_seed_start + max(self.eval_episodes, self.eval_round_episodes)
        need(last_eval <= self.train_seed_start or self.eval_seed_start >= self.train_seed_start + 10 * self.demos_per_task,
             "eval_seed_start", "evaluation seeds must not overlap the demonstration seeds (held out)")
        need(isinstance(self.model, dict), "model", "must be a mapping of FedVLAConfig fields")
        if "fedpart" in self.methods:
            need(1 <= self.fedpart_layers < int(self.model.get("n_layers", 4)), "fedpart_layers",
                 "must be in [1, n_layers) so FedPart trains a part of the trunk")
        self.model.setdefault("camera_names", ["corner", "topview", "gripperPOV"])
        self.model.setdefault("proprio_dim", 4)
        self.model.setdefault("action_dim", 4)

    @classmethod
    def from_yaml(cls, path) -> "Table1Config":
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Table1Config: unknown keys in {path}: {unknown}")
        return cls(**data)

    # -- derived ------------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    def eval_rounds(self) -> list[int]:
        """Rounds evaluated: every eval_every-th round, and always the last one."""
        rounds = {self.rounds}
        if self.eval_every:
            rounds |= {r for r in range(1, self.rounds + 1) if r % self.eval_every == 0}
        return sorted(rounds)

    def episodes_for_round(self, rnd: int) -> int:
        return self.eval_episodes if rnd == self.rounds else self.eval_round_episodes

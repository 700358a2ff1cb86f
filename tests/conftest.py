"""Shared test fixtures.

Every test gets its own ROS_DOMAIN_ID and loopback-only discovery, set in os.environ so that
the processes a test starts inherit them. Domain ids are derived from the pid and a counter,
so two pytest runs on one machine do not see each other's nodes; under pytest-xdist each worker
draws from its own slice of the ids, so tests running at the same time in two workers never share one.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# MuJoCo picks its GL backend when it is first imported (test modules import it at collection).
os.environ.setdefault("MUJOCO_GL", "egl")
_domain_counter = itertools.count()
#: Fast DDS maps domain ids to UDP ports; 1..100 is safe on Linux.
DOMAIN_IDS = range(1, 101)


def _worker_domain_ids() -> range:
    """The domain ids this pytest process may use: all of them, or worker gwN's own slice under pytest-xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return DOMAIN_IDS
    size = len(DOMAIN_IDS) // count
    if size < 1:
        raise RuntimeError(f"{count} xdist workers: more than the {len(DOMAIN_IDS)} ROS domain ids tests can use")
    index = int(worker[2:])
    return DOMAIN_IDS[index * size:(index + 1) * size]


def _next_domain_id() -> int:
    ids = _worker_domain_ids()
    return ids[(os.getpid() * 7 + next(_domain_counter)) % len(ids)]


def pytest_collection_modifyitems(config, items):
    """Files holding a `slow` test come first, each file's own order kept (without xdist only the order changes).

    scripts/test.sh runs files in parallel (pytest-xdist --dist loadfile --no-loadscope-reorder): workers take
    files in this order, so each long file starts at once on a worker of its own while the others share the
    short files; xdist's own order (most tests first) started the longest, Table 1's smoke run, last.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable


@pytest.fixture(autouse=True)
def ros_isolation(monkeypatch, tmp_path):
    """Loopback-only discovery, a private domain id and a private ROS log dir for every test."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    domain = _next_domain_id()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield domain


@pytest.fixture
def rclpy_context():
    """A private, initialised rclpy Context, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class ProcessGroup:
    """Real child processes started by a test; all are terminated (then killed) at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        cmd = [sys.executable, *args] if args[0] in ("-m", "-c") or args[0].endswith(".py") else args
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(REPO), start_new_session=True)
        proc.log_path = self.log_dir / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, proc) -> str:
        return Path(proc.log_path).read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def processes(tmp_path):
    """Start real processes (`processes.start([...], name)`); stopped at teardown."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def wait_for(predicate, timeout, what=None, poll=0.05):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` s pass. Then, with `what`, an
    AssertionError naming it; without, the predicate's last value (for callers that assert with their own message).
    Tests import it: ``from conftest import wait_for`` (pytest puts this folder on sys.path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    if what is None:
        return predicate()
    raise AssertionError(f"timed out waiting for {what}")

"""SuperLinkProcess: run a Flower SuperLink and drive it with the `flwr` CLI (register nodes, submit runs).

Used by ``fedvla-federation serve``, the federation launch file, the tests and the benchmark, so
the deployment path is exercised exactly as an operator would run it. State lives in one folder:

    <state-dir>/superlink.db     SuperLink database (registered node keys, runs) - survives restarts
    <state-dir>/flwr/config.toml the flwr CLI's connection config (FLWR_HOME), SuperLink name "fedvla"
    <state-dir>/checkpoints/     global checkpoints (default of the ServerApp, via FEDVLA_FEDERATION_DIR)
    <state-dir>/superlink.log
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import tomli_w

from fedvla_flower.app_dir import app_dir as app_dir_of_fedvla_flower
from fedvla_flower.flwr_cli import bin_dir, flwr_json

SUPERLINK_NAME = "fedvla"


class SuperLinkProcess:
    """One flower-superlink process (TLS + SuperNode auth unless ``insecure``) and its flwr CLI config.

    Args:
        state_dir: folder for the database, CLI config, checkpoints and log.
        certs_dir: folder with ca.crt, server.pem, server.key (``fedvla-federation certs``); required unless insecure.
        insecure: plain HTTP and no node authentication (explicit opt-in).
        host / port: where the SuperLink listens (Fleet, Control and Runtime APIs on one port).
    """

    def __init__(self, state_dir, certs_dir=None, insecure: bool = False, host: str = "127.0.0.1", port: int = 9092):
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.insecure = insecure
        self.certs_dir = Path(certs_dir).resolve() if certs_dir else None
        if not insecure:
            if self.certs_dir is None:
                raise ValueError("SuperLinkProcess: certs_dir is required for TLS (or pass insecure=True)")
            for name in ("ca.crt", "server.pem", "server.key"):
                if not (self.certs_dir / name).is_file():
                    raise FileNotFoundError(f"{self.certs_dir / name} missing; run `fedvla-federation certs --out DIR`")
        self.host, self.port = host, int(port)
        self.flwr_home = self.state_dir / "flwr"
        self.log_path = self.state_dir / "superlink.log"
        self.proc: subprocess.Popen | None = None
        self._write_cli_config()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.flwr_home), "PATH": bin_dir() + os.pathsep + os.environ.get("PATH", ""),
                "FEDVLA_FEDERATION_DIR": str(self.state_dir)}

    def _write_cli_config(self) -> None:
        conn: dict[str, Any] = {"address": self.address}
        if self.insecure:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.certs_dir / "ca.crt")
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": SUPERLINK_NAME,
                                                                               SUPERLINK_NAME: conn}}))

    def command(self) -> list[str]:
        cmd = [str(Path(bin_dir()) / "flower-superlink"), "--host", self.host, "--port", str(self.port),
               "--database", str(self.state_dir / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.insecure:
            return cmd + ["--insecure"]
        c = self.certs_dir
        return cmd + ["--ssl-certfile", str(c / "server.pem"), "--ssl-keyfile", str(c / "server.key"),
                      "--ssl-ca-certfile", str(c / "ca.crt"), "--enable-supernode-auth"]

    # -- process ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until its port accepts connections."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(), cwd=str(self.state_dir), start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"SuperLink did not listen on {self.address} within {timeout} s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the SuperLink and everything it started (its ServerApp processes)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the SuperLink's whole process group (crash simulation)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    # -- flwr CLI --------------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """Run ``flwr <args> fedvla --format json`` and return its JSON answer."""
        return flwr_json(list(args), self.env(), str(self.state_dir), timeout)

    def register_node(self, public_key) -> str:
        """Register a SuperNode public key (idempotent); returns the node id or '' if it was already registered."""
        res = self.flwr("supernode", "register", str(public_key), SUPERLINK_NAME)
        if res.get("success"):
            return str(res["node-id"])
        if "already in use" in res.get("error-message", ""):
            return ""
        raise RuntimeError(f"registering {public_key} failed: {res.get('error-message')}")

    def list_nodes(self) -> list[dict]:
        return self.flwr("supernode", "list", SUPERLINK_NAME).get("nodes", [])

    def submit(self, run_config: Mapping[str, Any], app_dir=None) -> str:
        """``flwr run`` the FedVLA app (``app_dir``: fedvla_flower's own) with these run-config overrides; the run id."""
        app_dir = app_dir or app_dir_of_fedvla_flower()
        cfg_path = self.state_dir / "run_config.toml"
        cfg_path.write_text(tomli_w.dumps(dict(run_config)))
        res = self.flwr("run", str(app_dir), SUPERLINK_NAME, "--run-config", str(cfg_path))
        if not res.get("success"):
            raise RuntimeError(f"flwr run failed: {res.get('error-message')}")
        return str(res["run-id"])

    def run_info(self, run_id: str) -> dict:
        for run in self.flwr("ls", SUPERLINK_NAME).get("runs", []):
            if str(run.get("run-id")) == str(run_id):
                return run
        return {}

    def stop_run(self, run_id: str) -> None:
        self.flwr("stop", str(run_id), SUPERLINK_NAME)

    def wait_run(self, run_id: str, timeout: float, poll_s: float = 2.0,
                 on_poll: Callable[[dict], None] | None = None) -> dict:
        """Poll until the run finished (returns its info) or ``timeout`` passes (TimeoutError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.run_info(run_id) if self.alive else {}
            if on_poll is not None:
                on_poll(info)
            if str(info.get("status", "")).startswith("finished"):
                return info
            if not self.alive:
                raise RuntimeError("the SuperLink died during the run")
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} not finished within {timeout} s")

    def __enter__(self) -> "SuperLinkProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""`fedvla-federation`: credentials and the federation server.

    fedvla-federation certs --out certs --nodes 2
        CA, SuperLink certificate (SAN localhost, 127.0.0.1 + --host), node0..N-1 key pairs.
    fedvla-federation serve --certs certs --rounds 2 --min-clients 2 --round-timeout 600
        Starts the SuperLink (TLS + SuperNode authentication), registers every certs/*.pub node key,
        submits the FedVLA run and watches it: if the SuperLink dies, it is restarted and the run is
        resubmitted, resuming from the last saved round. --insecure must be given explicitly.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from fedvla_core.federated.local_round import round_default

from .certs import generate_certificates


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def cmd_certs(args) -> int:
    hosts = ["localhost", "127.0.0.1"] + [h for h in args.host if h not in ("localhost", "127.0.0.1")]
    paths = generate_certificates(args.out, num_nodes=args.nodes, hosts=hosts, days=args.days)
    for name, path in paths.items():
        print(f"{name:12s} {path}")
    print(f"\nServer: fedvla-federation serve --certs {args.out}\n"
          f"Robot i: flower-supernode --root-certificates {args.out}/ca.crt "
          f"--auth-supernode-private-key {args.out}/node<i> (through the fed client node)")
    return 0


def run_config_from_args(args) -> dict:
    cfg = {"num-server-rounds": args.rounds, "strategy": args.strategy, "scope": args.scope,
           "min-nodes": args.min_clients, "round-timeout": args.round_timeout,
           "node-wait-timeout": args.node_wait_timeout, "round-interval": args.round_interval,
           "fedpart-layers": args.fedpart_layers, "proximal-mu": args.proximal_mu,
           "local-steps": args.local_steps, "batch-size": args.batch_size, "learning-rate": args.lr,
           "checkpoint-dir": str(Path(args.checkpoint_dir or Path(args.state_dir) / "checkpoints").resolve())}
    if args.base_checkpoint:
        cfg["base-checkpoint"] = str(Path(args.base_checkpoint).resolve())
    if args.model_config:
        cfg["model-config"] = args.model_config
    for item in args.run_config:
        for pair in shlex.split(item):
            key, _, value = pair.partition("=")
            cfg[key] = _parse_value(value)
    return cfg


def cmd_serve(args) -> int:
    from .superlink import SuperLinkProcess

    if not args.insecure and not args.certs:
        print("serve: --certs DIR is required (TLS + SuperNode auth are on by default); "
              "pass --insecure explicitly to run without them", file=sys.stderr)
        return 2
    link = SuperLinkProcess(args.state_dir, certs_dir=args.certs, insecure=args.insecure, host=args.host,
                            port=args.port)
    run_config = run_config_from_args(args)
    ckpt = Path(run_config["checkpoint-dir"]) / "latest.json"
    restarts = 0
    run_id = None
    try:
        link.start()
        print(f"SuperLink on {link.address} ({'INSECURE' if args.insecure else 'TLS + SuperNode auth'}), "
              f"state in {link.state_dir}", flush=True)
        if not args.insecure:
            keys = args.node_key or sorted(str(p) for p in Path(args.certs).glob("*.pub"))
            for key in keys:
                node = link.register_node(key)
                print(f"registered {key}" + (f" as node {node}" if node else " (already registered)"), flush=True)
        last = [None]

        def progress(info: dict) -> None:
            try:
                done = json.loads(ckpt.read_text())
            except (FileNotFoundError, ValueError):
                return
            if done.get("round") != last[0]:
                last[0] = done.get("round")
                m = done.get("metrics", {})
                print(f"round {done['round']}/{args.rounds} saved: clients={m.get('num-clients')} "
                      f"rejected={m.get('num-rejected')} loss={m.get('train-loss')} bytes-up={m.get('bytes-up')} "
                      f"wall={m.get('round-wall-s')}", flush=True)

        while True:
            run_id = link.submit(run_config)
            print(f"submitted run {run_id}", flush=True)
            try:
                info = link.wait_run(run_id, timeout=args.run_timeout, on_poll=progress)
                break
            except RuntimeError as err:  # the SuperLink died: restart it and resume from the checkpoint
                restarts += 1
                if restarts > args.max_restarts:
                    print(f"giving up after {restarts - 1} SuperLink restarts: {err}", file=sys.stderr)
                    return 1
                print(f"{err}; restarting the SuperLink ({restarts}/{args.max_restarts})", flush=True)
                link.stop()
                time.sleep(1.0)
                link.start()
        progress({})
        print(f"run {run_id}: {info.get('status')}", flush=True)
        summary = Path(run_config["checkpoint-dir"]) / "run_summary.json"
        if summary.is_file():
            print(summary.read_text())
        if args.keep_alive:
            print("keeping the SuperLink up (Ctrl-C to stop)", flush=True)
            while link.alive:
                time.sleep(1.0)
        return 0 if str(info.get("status")) == "finished:completed" else 1
    except KeyboardInterrupt:
        if run_id and link.alive:
            link.stop_run(run_id)
        return 130
    finally:
        link.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla-federation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("certs", help="generate CA, SuperLink certificate and SuperNode keys")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--nodes", type=int, default=2, help="number of SuperNode key pairs (node0..)")
    c.add_argument("--host", action="append", default=[], help="extra SAN of the server certificate (repeatable)")
    c.add_argument("--days", type=int, default=365, help="validity in days")
    c.set_defaults(func=cmd_certs)

    s = sub.add_parser("serve", help="run the SuperLink and the scheduled federated rounds",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--certs", help="folder from `fedvla-federation certs` (ca.crt, server.pem, server.key, *.pub)")
    s.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication (explicit opt-in)")
    s.add_argument("--node-key", action="append", default=[], help="public key to register (default: certs/*.pub)")
    s.add_argument("--host", default="127.0.0.1", help="SuperLink listen address")
    s.add_argument("--port", type=int, default=9092, help="SuperLink port (Fleet, Control, Runtime APIs)")
    s.add_argument("--state-dir", default="runs/federation", help="database, flwr config, checkpoints, logs")
    s.add_argument("--checkpoint-dir", default="", help="global checkpoints ('' = STATE_DIR/checkpoints)")
    s.add_argument("--rounds", type=int, default=2, help="total federated rounds (a restart resumes)")
    s.add_argument("--strategy", default="eda", choices=["eda", "fedavg", "fedprox"], help="aggregation")
    s.add_argument("--scope", default="trunk", choices=["trunk", "full"], help="what travels")
    s.add_argument("--min-clients", type=int, default=2, help="nodes required per round")
    s.add_argument("--round-timeout", type=float, default=600.0, help="seconds to wait for replies per round")
    s.add_argument("--node-wait-timeout", type=float, default=600.0, help="seconds to wait for min clients")
    s.add_argument("--round-interval", type=float, default=0.0, help="seconds between rounds (schedule)")
    s.add_argument("--fedpart-layers", type=int, default=0, help="FedPart: layers per round (0 = off)")
    s.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx mu (strategy fedprox)")
    s.add_argument("--local-steps", type=int, default=round_default("local_steps"),
                   help="client optimizer steps per round")
    s.add_argument("--batch-size", type=int, default=round_default("batch_size"), help="client batch size")
    s.add_argument("--lr", type=float, default=round_default("learning_rate"), help="client learning rate")
    s.add_argument("--base-checkpoint", default="", help="initial policy (save_pretrained folder)")
    s.add_argument("--model-config", default="", help="JSON FedVLAConfig kwargs when no base checkpoint")
    s.add_argument("--run-config", action="append", default=[], help="extra 'key=value ...' run-config overrides")
    s.add_argument("--run-timeout", type=float, default=24 * 3600.0, help="give up on the run after this many seconds")
    s.add_argument("--max-restarts", type=int, default=3, help="SuperLink restarts before giving up")
    s.add_argument("--keep-alive", action="store_true", help="keep the SuperLink up after the run")
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""fedvla-train: centralized training of a FedVLA policy on episode files (a thin shell over training.py).

    fedvla-train --episodes data/episodes --output runs/central --ffn-kind dgmoe --max-steps 2000

Camera names, proprioception and action sizes come from the episodes; any other FedVLAConfig field
can be set with --model FIELD=VALUE (VALUE parsed as JSON when it parses). The result is a
save_pretrained folder (config.json + model.safetensors, normalization included) and metrics.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from .training import TrainConfig


def _add_train_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "") + f" (default: {f.default})"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, default=f.default, action=argparse.BooleanOptionalAction,
                               help=helptext)
        else:
            group.add_argument(flag, dest=f.name, default=f.default, type=type(f.default), help=helptext)


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model expects FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", nargs="+", required=True, help="Episode folders and/or .mcap files.")
    parser.add_argument("--output", required=True, help="Folder for the trained checkpoint and metrics.json.")
    parser.add_argument("--init", default=None, help="Start from this save_pretrained folder instead of a fresh model.")
    parser.add_argument("--ffn-kind", default="dgmoe", choices=["dgmoe", "adamoe", "topk", "dense"],
                        help="FFN of the trunk blocks (default: dgmoe).")
    parser.add_argument("--no-iosp", action="store_true", help="Disable Instruction-Oriented Scene Parsing.")
    parser.add_argument("--chunk-size", type=int, default=10, help="Action chunk length H (default: 10).")
    parser.add_argument("--image-size", type=int, default=128, help="Image side fed to the model (default: 128).")
    parser.add_argument("--cameras", nargs="+", default=None, help="Cameras to use (default: the episodes' cameras).")
    parser.add_argument("--model", action="append", default=[], type=_parse_override, metavar="FIELD=VALUE",
                        help="Override any FedVLAConfig field, e.g. --model d_model=256 --model n_layers=6.")
    parser.add_argument("--include-failed", action="store_true", help="Also train on episodes marked failed.")
    _add_train_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("fedvla-train")

    from fedvla_core.episodes import EpisodeDataset  # the project's episode format (no rclpy)

    from .model import FedVLAConfig, FedVLAPolicy
    from .training import train

    own_flags = {"chunk_size": "--chunk-size", "image_size": "--image-size", "camera_names": "--cameras",
                 "ffn_kind": "--ffn-kind", "use_iosp": "--no-iosp", "proprio_dim": "(from the episodes)",
                 "action_dim": "(from the episodes)"}
    clash = sorted(set(dict(args.model)) & set(own_flags))
    if clash:  # the dataset reads these too: a --model override would make the two disagree
        raise SystemExit("fedvla-train: " + ", ".join(f"--model {k}=... is set by {own_flags[k]}" for k in clash))
    train_cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if args.init:
        policy = FedVLAPolicy.from_pretrained(args.init)
        cfg = policy.config
    else:
        cfg = None
    dataset = EpisodeDataset(args.episodes, camera_names=args.cameras or (cfg.camera_names if cfg else None),
                             chunk_size=cfg.chunk_size if cfg else args.chunk_size,
                             only_successful=not args.include_failed,
                             image_size=cfg.image_size if cfg else args.image_size)
    if len(dataset) == 0:
        raise SystemExit(f"fedvla-train: no usable episodes in {args.episodes}")
    log.info("%d samples from %d episodes, cameras %s", len(dataset), dataset.num_episodes, dataset.camera_names)
    if cfg is None:
        cfg = FedVLAConfig(camera_names=dataset.camera_names, image_size=args.image_size, chunk_size=args.chunk_size,
                           proprio_dim=dataset.proprio_dim, action_dim=dataset.action_dim, ffn_kind=args.ffn_kind,
                           use_iosp=not args.no_iosp, **dict(args.model))
        policy = FedVLAPolicy(cfg)
    metrics = train(policy, dataset, train_cfg)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("engine: %s", metrics.get("engine"))
    log.info("loss %.4f after %d steps (%.1f s), %.2f experts/token; saved to %s", metrics["loss"],
             metrics["steps"], metrics["wall_time_s"], metrics["mean_active_experts"], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``facekd head-memory``: the margin head's memory per GPU for a config at given world sizes."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command

MIB, GIB = 2 ** 20, 2 ** 30


@COMMANDS.register("head-memory")
class HeadMemoryCommand(Command):
    """Computed by :func:`facekd.losses.head_memory.head_memory` from the config's shapes."""

    help = "print the margin head's memory per GPU, replicated and sharded, for a config and world sizes"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="experiment YAML (its model, batch, optimiser, head)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--world-size", type=int, nargs="+", default=[8], metavar="W", help="GPUs (default 8)")
        parser.add_argument("--classes", type=int, default=None,
                            help="identities C (default: read from the config's training data)")

    def run(self, args: argparse.Namespace) -> int:
        print(memory_table(args.config, args.world_size, args.classes, args.overrides))
        return 0


def memory_table(config: str, world_sizes, classes=None, overrides=()) -> str:
    """The table ``facekd head-memory`` prints (Markdown)."""
    import inspect

    from facekd.config import load_config
    from facekd.errors import ConfigError
    from facekd.losses import LOSSES
    from facekd.losses.head_memory import head_memory

    cfg = load_config(config, list(overrides))
    heads = [spec for spec in cfg.losses if spec.get("name") in ("arcface", "cosface", "partial_fc", "partial_fc_cosface")]
    if not heads:
        raise ConfigError(f"{config}: losses has no margin head (arcface, cosface, partial_fc, partial_fc_cosface)")
    name = heads[0]["name"]
    default_rate = inspect.signature(LOSSES.get(name)).parameters.get("sample_rate")
    rate = float(heads[0].get("sample_rate", default_rate.default if default_rate else 1.0))
    if classes is None:
        from facekd.data import build_train_dataset

        classes = build_train_dataset(cfg.data).num_classes
    batch = cfg.train.identities_per_batch * cfg.train.images_per_identity
    lines = [f"{cfg.name}: {name} over C = {classes:,} identities, D = {cfg.model.embedding_size}, "
             f"{batch} faces per GPU, sample_rate {rate:g}, {cfg.optim.optimizer}; float32, MiB per GPU "
             f"(facekd shards partial_fc heads under DDP)",
             "",
             "| GPUs | layout | centres / GPU | sampled | centres + grad + optimiser + DDP | sampled + logits "
             "| total GiB |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for world in world_sizes:
        for sharded in (False, True) if world > 1 else (False,):
            m = head_memory(classes, cfg.model.embedding_size, world, batch, rate, sharded, cfg.optim.optimizer)
            b = m.bytes
            lines.append(f"| {world} | {m.layout} | {m.centres_per_gpu:,} | {m.sampled:,} "
                         f"| {(b['centres'] + b['gradient'] + b['optimizer'] + b['ddp_buckets']) / MIB:,.0f} "
                         f"| {(b['sampled'] + b['logits']) / MIB:,.0f} | {m.total / GIB:.2f} |")
    return "\n".join(lines)

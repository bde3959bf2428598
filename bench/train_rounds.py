"""Student step variants timed in interleaved rounds, each in processes of its own (``--rounds``).

``bench/train_throughput.py --rounds R --step-variants a,b,...`` builds every variant's real
:class:`~facekd.training.trainer.Trainer` in worker processes — one process with
``settings.threads`` torch threads, or ``world_size`` gloo ranks (DDP, ``threads`` each; the P x K
batch is split between them, so the optimiser step sees the same global batch) — warms each up
(``torch.compile`` compiles here), then runs ``R`` rounds.  In every round each variant, in an
order rotated from round to round, times (a) ``steps`` model steps and (c) ``Trainer.fit`` end to
end while the other variants' processes wait on their pipes.  Each variant's ratio to the baseline
(the first variant) is taken within a round, so a shared machine's load swings hit both sides of a
ratio alike; the report gives every round's ratio and their median.

Torch's thread count is per process, so even the one-process variants run in workers: a 2-thread
and a 1-thread variant can then alternate in one run.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from train_phases import TrainBenchSettings, build_trainer, time_data, time_end_to_end, time_model


def rank_settings(settings: TrainBenchSettings) -> TrainBenchSettings:
    """The settings one of ``world_size`` ranks runs with: ``P / world_size`` identities per batch."""
    world = settings.world_size
    if settings.identities_per_batch % world:
        raise SystemExit(f"--rounds: P = {settings.identities_per_batch} identities per batch cannot be split "
                         f"between {world} ranks")
    return dataclasses.replace(settings, identities_per_batch=settings.identities_per_batch // world)


def _worker(conn: Any, settings: TrainBenchSettings, rank: int, port: int, workdir: str, data_root: Optional[str],
            teacher_checkpoint: str) -> None:
    """One process of a variant: build, warm up, then answer ``("model", steps)`` / ``("e2e",)`` / ``("stop",)``."""
    from facekd.training.distributed import DistInfo

    torch.set_num_threads(settings.threads)
    world = settings.world_size
    dist = DistInfo(device=torch.device(settings.device))
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
        dist = DistInfo(rank, world, rank, torch.device(settings.device), "gloo")
    try:
        run = build_trainer("student", settings, Path(workdir), Path(data_root) if data_root else None, dist=dist,
                            teacher_checkpoint=Path(teacher_checkpoint))
        data = time_data(run.trainer, settings, keep=4)
        kept = data.pop("kept")
        time_model(run.trainer, kept, 1, settings.warmup)       # warm-up: torch.compile compiles here
        conn.send({"data_img_s": data["img_s"] * world, "batch_size": settings.batch_size * world})
        while True:
            command = conn.recv()
            if command[0] == "model":
                conn.send(time_model(run.trainer, kept, command[1], 0))
            elif command[0] == "e2e":
                conn.send(time_end_to_end(run.trainer, run.clock, settings))
            else:
                break
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Variant:
    """The worker processes of one variant and the pipes to them."""

    def __init__(self, name: str, settings: TrainBenchSettings, workdir: Path, data_root: Optional[Path],
                 teacher_checkpoint: Path) -> None:
        self.name, self.settings = name, rank_settings(settings)
        context = multiprocessing.get_context("spawn")
        port = _free_port()
        self.conns, self.procs = [], []
        for rank in range(settings.world_size):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, daemon=True, args=(
                child, self.settings, rank, port, str(workdir), str(data_root) if data_root else None,
                str(teacher_checkpoint)))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def ask(self, *command: Any) -> List[Dict[str, Any]]:
        """Send ``command`` to every rank; their answers (a rank that died raises EOFError)."""
        for conn in self.conns:
            conn.send(command)
        return [conn.recv() for conn in self.conns]

    def stop(self) -> None:
        """End the workers."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def run_rounds(variants: Dict[str, TrainBenchSettings], rounds: int, workdir: Path, data_root: Optional[Path],
               teacher_checkpoint: Path, steps: int) -> Dict[str, Any]:
    """Time every variant (name -> settings; the first is the baseline) in ``rounds`` interleaved rounds.

    Returns ``{"variants": {name: {...img/s per round...}}, "ratios": {name: {...}}}`` (JSON-ready):
    global img/s (all ranks) of the model step and end to end, each round's ratio to the
    baseline and the median of those ratios.
    """
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")   # no compile-worker pools beside the ranks
    running = {name: Variant(name, s, workdir / name, data_root, teacher_checkpoint) for name, s in variants.items()}
    names = list(running)
    out = {name: {"world_size": s.world_size, "threads": s.threads, "model_img_s": [], "end_to_end_img_s": []}
           for name, s in variants.items()}
    try:
        for name, variant in running.items():
            ready = [conn.recv() for conn in variant.conns]
            out[name].update(data_img_s=ready[0]["data_img_s"], batch_size=ready[0]["batch_size"])
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                variant, world = running[name], variants[name].world_size
                model = variant.ask("model", steps)[0]
                out[name]["model_img_s"].append(world * model["img_s"])
                e2e = variant.ask("e2e")[0]
                out[name]["end_to_end_img_s"].append(world * e2e["img_s"])
    finally:
        for variant in running.values():
            variant.stop()
    return {"variants": out, "ratios": round_ratios(out, names[0])}


def round_ratios(results: Dict[str, Dict[str, Any]], baseline: str) -> Dict[str, Dict[str, Any]]:
    """Each variant's img/s over the baseline's, round by round, and the medians (model and end to end)."""
    ratios = {}
    for name, result in results.items():
        entry: Dict[str, Any] = {}
        for key in ("model_img_s", "end_to_end_img_s"):
            per_round = [v / b for v, b in zip(result[key], results[baseline][key])]
            entry[key.replace("_img_s", "")] = per_round
            entry[key.replace("_img_s", "_median")] = statistics.median(per_round) if per_round else None
        ratios[name] = entry
    return ratios


def format_rounds(report: Dict[str, Any], baseline: str) -> str:
    """A markdown table of the rounds: median img/s and the ratios to ``baseline``, each round's too."""
    lines = [f"| variant | processes x threads | batch | (b) data img/s | (a) model img/s | (c) end to end img/s "
             f"| model / {baseline} | end to end / {baseline} (rounds) |", "|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        ratio = report["ratios"][name]
        rounds = ", ".join(f"{x:.2f}" for x in ratio["end_to_end"])
        lines.append(f"| {name} | {v['world_size']} x {v['threads']} | {v['batch_size']} | {v['data_img_s']:.0f} | "
                     f"{statistics.median(v['model_img_s']):.1f} | {statistics.median(v['end_to_end_img_s']):.1f} | "
                     f"{ratio['model_median']:.2f}x | **{ratio['end_to_end_median']:.2f}x** ({rounds}) |")
    return "\n".join(lines)


def variant_names(baseline: str, variants: Sequence[str]) -> List[str]:
    """The baseline first, then the other variants once each."""
    return [baseline] + [v for v in variants if v != baseline]

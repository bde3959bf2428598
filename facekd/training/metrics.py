"""Training metrics: one JSON object per line in ``metrics.jsonl`` (+ TensorBoard if installed).

Each record has ``kind`` (``train``, ``val``, ``epoch``), ``step``, ``epoch``, a wall-clock
``time`` and the values.  TensorBoard event files are written too when
``torch.utils.tensorboard`` imports (it needs the ``tensorboard`` package); otherwise the
JSONL file is the only log and :attr:`MetricsLogger.tensorboard` is ``False``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

LOG = logging.getLogger(__name__)


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or a broken tensorboard install
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)      # JSON has no NaN/inf
    return value


class MetricsLogger:
    """Append-only metrics log for one run.

    Args:
        output_dir: the run directory; the log is ``output_dir/metrics.jsonl`` and TensorBoard
            events go to ``output_dir/tensorboard``.
        enabled: False on non-zero ranks (nothing is written).
        tensorboard: try to write TensorBoard events as well.
    """

    def __init__(self, output_dir: Union[str, Path], enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._writer = _tensorboard_writer(Path(output_dir) / "tensorboard")
                if self._writer is None:
                    LOG.info("tensorboard is not installed: metrics go to %s only", self.path)

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are being written."""
        return self._writer is not None

    def log(self, kind: str, step: int, epoch: int, values: Dict[str, Any]) -> None:
        """Append one record; numeric values also go to TensorBoard as ``kind/name``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "epoch": int(epoch), "time": round(time.time(), 3)}
        record.update({key: _plain(value) for key, value in values.items()})
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch", "time") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-does those steps)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: Union[str, Path], kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, optionally only those of one ``kind``."""
    return [r for r in _records(Path(path)) if kind is None or r.get("kind") == kind]


def _records(path: Path) -> Iterator[Dict[str, Any]]:
    with path.open() as stream:
        for line in stream:
            line = line.strip()
            if line:
                yield json.loads(line)

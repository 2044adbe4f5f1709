"""TensorBoard: event files in the run's own folder (<run dir>/tensorboard), so `tensorboard --logdir runs`
lists every run, a sweep's trials included, by path.

Scalars: `train/loss`, `val/loss`, ... (each history column, step = epoch), `lr`, `epoch_seconds`; at the end
`final/test_sse_mean`, `final/pca_sse_mean`, ...; HPARAMS: the flattened config against the final metrics;
TEXT: the config as YAML and the run directory; IMAGES: `figures/<name>`, the run's PNG figures as written.
torch's SummaryWriter (it needs the `tensorboard` package) is imported when a run starts.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from funcae_cli.tracking.base import FinalInfo, RunInfo, flatten

# history.csv column -> scalar tag (anything else: "train_x" -> "train/x", "val_x" -> "val/x")
TAGS = {"lr": "lr", "seconds": "epoch_seconds"}
# The final metrics the HPARAMS dashboard shows against the config (written as scalars `final/<name>`).
HPARAM_METRICS = ("test_sse_mean", "pca_sse_mean", "best_val_loss")


def require() -> None:
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (ImportError without `tensorboard`)


def scalar_tag(column: str) -> str:
    if column in TAGS:
        return TAGS[column]
    split, _, rest = column.partition("_")
    return f"{split}/{rest}" if split in ("train", "val") and rest else column


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # On resume, TensorBoard hides the events a killed session wrote past the checkpoint's epoch.
        purge = run.start_epoch + 1 if run.start_epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(run.logdir), purge_step=purge)
        params = {k: v for k, v in flatten(run.config).items() if not k.startswith("track.")}
        exp, ssi, self._sei = hparams(params, {f"final/{m}": 0.0 for m in HPARAM_METRICS})
        fw = self.writer._get_file_writer()
        fw.add_summary(exp)
        fw.add_summary(ssi)
        self.writer.add_text("config", "```yaml\n" + run.config_text + "\n```", run.start_epoch)
        self.writer.add_text("run_dir", str(run.run_dir), run.start_epoch)

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(scalar_tag(k), float(v), step)

    def final(self, info: FinalInfo) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        for k, v in info.metrics.items():
            self.writer.add_scalar(f"final/{k}", v, info.epoch)
        fw = self.writer._get_file_writer()
        for path in info.figures:
            data = Path(path).read_bytes()
            h, w = png_size(data)
            image = Summary.Image(height=h, width=w, colorspace=4, encoded_image_string=data)  # RGBA PNG as is
            fw.add_summary(Summary(value=[Summary.Value(tag=f"figures/{Path(path).stem}", image=image)]), info.epoch)

    def close(self, status: str) -> None:
        if self.writer is None:
            return
        if status == "FINISHED":
            self.writer._get_file_writer().add_summary(self._sei)
        self.writer.close()
        self.writer = None

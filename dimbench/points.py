"""The sweep point: one (model, resolution, batch, dtype, device, task) to measure, with a stable key."""

from __future__ import annotations

import dataclasses
from typing import Any

import models


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of a suite's sweep.

    ``resolution`` is in pixels; ``input_size`` is the side the model sees (the model's
    :meth:`models.ModelInfo.input_size`: resolution / 8 for a model on SD-VAE latents). ``task`` is what is
    measured at this point ("forward", "train_step", ...: the metric set decides); ``checkpoint`` an optional
    local weights path; ``compile`` the torch.compile mode the timed metrics run the model under (None: eager).
    """

    suite: str
    model: str
    resolution: int
    input_size: int
    batch: int
    dtype: str  # "float32" | "bfloat16" | "float16"
    device: str  # resolved: "cpu", "cuda", "cuda:N"
    metrics: tuple[str, ...]
    checkpoint: str | None = None
    pad_layout: str | None = None  # DiM only: "lateral" | "cyclic" (None: the model's default)
    compile: str | None = None  # torch.compile mode ("default", "max-autotune", ...); None: eager (not compiled)

    @property
    def key(self) -> str:
        """Stable identity across runs (the suite name and metric list are not part of it)."""
        parts = [self.model, f"r{self.resolution}", f"b{self.batch}", self.dtype, self.device]
        if self.checkpoint:
            parts.append(f"ckpt={self.checkpoint}")
        if self.pad_layout:
            parts.append(f"pad={self.pad_layout}")
        if self.compile:  # only when compiled: an eager point keeps the key it always had
            parts.append(f"compile={self.compile}")
        return "|".join(parts)

    def at_resolution(self, resolution: int) -> SweepPoint:
        """The same point at another resolution (the input size follows the model's latent factor)."""
        return dataclasses.replace(self, resolution=resolution,
                                   input_size=models.model_info(self.model).input_size(resolution))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepPoint:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs["metrics"] = tuple(kwargs.get("metrics", ()))
        return cls(**kwargs)

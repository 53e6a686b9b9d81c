"""The sweep point: one (model, resolution, batch, dtype, device, task) to measure, with a stable key."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import models


class Options(Mapping[str, Any]):
    """A point's family options (constructor keyword -> value), frozen and hashable; unset (None) ones are left
    out, so a point that sets none equals one from before the option existed."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        self._items = tuple(sorted((str(k), v) for k, v in dict(items).items() if v is not None))

    def __getitem__(self, name: str) -> Any:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return dict(self._items) == dict(other.items()) if isinstance(other, Mapping) else NotImplemented

    def __repr__(self) -> str:
        return f"Options({dict(self._items)!r})"

    def __reduce__(self):
        return (Options, (dict(self._items),))


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of a suite's sweep.

    ``resolution`` is in pixels; ``input_size`` is the side the model sees (the model's
    :meth:`models.ModelInfo.input_size`: resolution / 8 for a model on SD-VAE latents). ``task`` is what is
    measured at this point ("forward", "train_step", ...: the metric set decides); ``checkpoint`` an optional
    local weights path; ``options`` the family options the model is built with (``Family.options``; a mapping is
    frozen into :class:`Options`); ``compile`` the torch.compile mode the timed metrics run the model under
    (None: eager).
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
    options: Options = Options()  # family options (None: the model's default, left out)
    compile: str | None = None  # torch.compile mode ("default", "max-autotune", ...); None: eager (not compiled)

    def __post_init__(self) -> None:
        if not isinstance(self.options, Options):
            object.__setattr__(self, "options", Options(self.options or {}))

    @property
    def key(self) -> str:
        """Stable identity across runs (the suite name and metric list are not part of it). Each family option set
        adds the part its family declares (``pad=cyclic``); a point without options keeps the key it always had."""
        parts = [self.model, f"r{self.resolution}", f"b{self.batch}", self.dtype, self.device]
        if self.checkpoint:
            parts.append(f"ckpt={self.checkpoint}")
        if self.options:
            parts += models.family_of_model(self.model).key_parts(self.options)
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
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SweepPoint:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs["metrics"] = tuple(kwargs.get("metrics", ()))
        return cls(**kwargs)

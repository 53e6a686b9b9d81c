"""Classifier-free guidance, in one convention with the conversion to DiT's stated once.

U-ViT and DiM write ε = ε_c + s·(ε_c − ε_u) (s = 0 is no guidance); DiT writes ε = ε_u + w·(ε_c − ε_u)
(w = 1 is no guidance). The two agree for s = w − 1; :meth:`Guidance.from_dit` is the one place that converts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Guidance"]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of scale ``s`` (U-ViT / DiM convention), optionally on the first channels only.

    ``channels``: guide only channels ``[0, channels)`` and keep the conditional prediction elsewhere (DiT guides
    3 of its 4 latent channels); None guides them all.
    """

    s: float  # U-ViT/DiM convention: ε = ε_c + s·(ε_c − ε_u)
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"Guidance.channels must be a positive channel count or None, got {self.channels}")

    @classmethod
    def from_dit(cls, w: float, channels: int | None = None) -> Guidance:
        """DiT's scale w (ε = ε_u + w·(ε_c − ε_u)) as s = w − 1."""
        return cls(float(w) - 1.0, channels)

    @classmethod
    def from_uvit(cls, s: float, channels: int | None = None) -> Guidance:
        """U-ViT's / DiM's scale s, as is."""
        return cls(float(s), channels)

    @property
    def w(self) -> float:
        """The same guidance in DiT's convention, w = s + 1."""
        return self.s + 1.0

    def combine(self, eps_cond: Tensor, eps_uncond: Tensor) -> Tensor:
        """ε_c + s·(ε_c − ε_u) on the guided channels, ε_c on the others. Inputs (B, C, ...) -> (B, C, ...)."""
        guided = eps_cond + self.s * (eps_cond - eps_uncond)
        if self.channels is None or self.channels >= eps_cond.shape[1]:
            return guided
        out = eps_cond.clone()
        out[:, : self.channels] = guided[:, : self.channels]
        return out

    def describe(self) -> str:
        """A method-string phrase, e.g. "classifier-free guidance s = 0.4 (w = 1.4 in DiT's convention)"."""
        text = f"classifier-free guidance s = {self.s:g} (w = {self.w:g} in DiT's convention)"
        if self.channels is not None:
            text += f" on the first {self.channels} channels"
        return text

"""dimbench: benchmark diffusion backbones (DiM, DiT, U-ViT) across resolutions, honestly labelled."""

__version__ = "0.1.0"

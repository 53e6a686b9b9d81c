"""FID with the standard TF-2015-12-05 Inception weights, from local files only (docs/contracts.md, "FID").

- :mod:`~dimbench.fid.inception`: torch-fidelity's Inception port, the weights file checked (SHA256) and read
  safely; features (pool3, unbiased logits).
- :mod:`~dimbench.fid.reference`: reference statistics (ADM, U-ViT, ``dimbench fid-stats``).
- :mod:`~dimbench.fid.vae`: Stable Diffusion's KL-f8 VAE through diffusers (optional extra ``vae``).
- :mod:`~dimbench.fid.pipeline`: sampling, decoding and extraction in durable chunks (resume, torchrun ranks).
- :mod:`~dimbench.fid.scores`: FID (dimbench's Fréchet distance), IS, KID, precision/recall (torch-fidelity's).
- :mod:`~dimbench.fid.options`: the ``fid`` metric's option types.

The metric is :mod:`dimbench.metrics.fid`; the commands ``dimbench fid-stats`` and ``dimbench fid`` are in
:mod:`dimbench.fid_cli`.
"""

"""FID with the standard TF-2015-12-05 Inception weights, from local files only (docs/contracts.md, "FID").

- :mod:`~dimbench.fid.inception`: torch-fidelity's Inception port, the weights file checked (SHA256) and read
  safely; features (pool3, unbiased logits) with either Inception resize (tf1 or torch).
- :mod:`~dimbench.fid.reference`: reference statistics (ADM, U-ViT, ``dimbench fid-stats``), compared.
- :mod:`~dimbench.fid.vae`: Stable Diffusion's KL-f8 VAE through diffusers (optional extra ``vae``).
- :mod:`~dimbench.fid.pipeline`: sampling, decoding and extraction in durable chunks (resume, torchrun ranks).
- :mod:`~dimbench.fid.scores`: FID (dimbench's Fréchet distance), IS, KID, precision/recall (torch-fidelity's).
- :mod:`~dimbench.fid.options`: the ``fid`` metric's option types.
- :mod:`~dimbench.fid.protocol`: each paper's evaluation protocol and released files (``protocols.yaml``), and
  whether a measured FID is comparable with a published one.
- :mod:`~dimbench.fid.precision`: the network's and the VAE's numerics as each paper ran them (autocast, TF32).
- :mod:`~dimbench.fid.patches` and :mod:`~dimbench.fid.folder`: patch-FID crops; features of a folder of images.

The metric is :mod:`dimbench.metrics.fid`; the commands ``dimbench fid-stats`` and ``dimbench fid`` are in
:mod:`dimbench.fid_cli`.
"""

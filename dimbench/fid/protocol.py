"""Each paper's FID evaluation protocol as data (``protocols.yaml``), and the judgement of whether a measured FID
stands beside a published one.

    >>> from dimbench.fid import protocol
    >>> protocol.for_model("dim_h_2")                      # Protocol(id="dim", sampler="dpm_solver++", ...)
    >>> protocol.published_guidance("dim_h_2", 512)        # 0.7, from the releases published at 512 px
    >>> protocol.judge(Ran(...), identify={})              # Verdict(release=..., comparable=..., failed=[...])

A measured FID is comparable with a published FID-50K only when the scored checkpoint is a known release (by its
SHA-256; a file the table does not know is never comparable), the point is that release's model and resolution,
and every item of the release's protocol matches what ran: sampler, its step placement, steps, guidance scale and
the channels it acts on, labels, the number of samples, the Inception resize, the reference file (by SHA-256) and
the numeric precision of the network and of the VAE decode. :func:`judge` names each item that does not match.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from importlib import resources
from typing import Any

import yaml

import models
from dimbench.paper import tables
from dimbench.training.sampling import SamplerSpec

DATA_FILE = "protocols.yaml"
PRECISIONS = ("float32", "tf32", "bf16", "fp16")
RESIZES = ("tf1", "torch")
#: What each Inception resize is, in words (the rows' method text and docs/contracts.md say the same).
RESIZE_TEXT = {
    "tf1": "torch-fidelity's TF1-style bilinear resize to 299 px, then (x - 128) / 128, as ADM's TensorFlow "
           "evaluator",
    "torch": "pytorch-fid's preprocessing: x / 255, F.interpolate(bilinear, align_corners=False) to 299 px, "
             "then 2x - 1, as U-ViT's and DiM's tools/fid_score.py",
}
PRECISION_TEXT = {
    "float32": "float32 (TF32 off)",
    "tf32": "float32 weights with TF32 matmuls and convolutions",
    "bf16": "bfloat16 autocast (float32 weights, outputs back to float32)",
    "fp16": "float16 autocast (float32 weights, outputs back to float32)",
}


class ProtocolDataError(ValueError):
    """The packaged protocols.yaml is malformed (a packaging bug: the message names the key)."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How one family's official code measured its published FID-50K."""

    id: str
    source: str
    sampler: str
    steps: int
    skip: str | None  # DPM-Solver's grid ("time_uniform"); None for samplers without one
    guided_channels: int | None
    labels: str
    samples: int
    precision: str
    vae_precision: str
    inception_resize: str

    def describe(self, guidance: float | None = None) -> str:
        """One line: what dimbench runs to follow this protocol."""
        spec = SamplerSpec(self.sampler, self.steps, guidance or 0.0)
        grid = f" ({self.skip} grid, intermediate points at grid points)" if self.skip else ""
        return (f"{spec.describe(self.guided_channels)}{grid}; {self.labels} labels; network "
                f"{self.precision}, VAE decode {self.vae_precision}; Inception resize {self.inception_resize}; "
                f"N = {self.samples:,}")


@dataclasses.dataclass(frozen=True)
class KnownFile:
    """A checkpoint release or a reference statistics file, known by its SHA-256 (None: not recorded)."""

    id: str
    what: str
    sha256: str | None


@dataclasses.dataclass(frozen=True)
class Reference(KnownFile):
    file: str = ""
    inception_resize: str = ""


@dataclasses.dataclass(frozen=True)
class Release(KnownFile):
    model: str = ""
    resolution: int = 0
    protocol: str | None = None
    guidance: float = 0.0
    reference: str = ""
    unsupported: str | None = None


@dataclasses.dataclass(frozen=True)
class Table:
    protocols: dict[str, Protocol]
    references: dict[str, Reference]
    releases: dict[str, Release]


def _sha(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ProtocolDataError(f"{DATA_FILE}: {where}.sha256: expected 64 hex digits or null, got {value!r}")
    return text


def _parse(data: Any) -> Table:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in
                                             ("protocols", "references", "releases")):
        raise ProtocolDataError(f"{DATA_FILE}: expected mappings 'protocols', 'references' and 'releases'")
    where = ""
    try:
        protocols = {}
        for pid, p in data["protocols"].items():
            where = f"protocols.{pid}"
            if p["precision"] not in PRECISIONS or p["vae_precision"] not in PRECISIONS:
                raise ProtocolDataError(f"{DATA_FILE}: {where}: precision must be one of {PRECISIONS}")
            if p["inception_resize"] not in RESIZES:
                raise ProtocolDataError(f"{DATA_FILE}: {where}.inception_resize: expected one of {RESIZES}")
            protocols[pid] = Protocol(pid, " ".join(str(p["source"]).split()), str(p["sampler"]), int(p["steps"]),
                                      p.get("skip"), p.get("guided_channels"), str(p["labels"]), int(p["samples"]),
                                      p["precision"], p["vae_precision"], p["inception_resize"])
        references = {}
        for rid, r in data["references"].items():
            where = f"references.{rid}"
            if r["inception_resize"] not in RESIZES:
                raise ProtocolDataError(f"{DATA_FILE}: {where}.inception_resize: expected one of {RESIZES}")
            references[rid] = Reference(rid, str(r["what"]), _sha(r.get("sha256"), where), str(r["file"]),
                                        r["inception_resize"])
        releases = {}
        for rid, r in data["releases"].items():
            where = f"releases.{rid}"
            if r.get("protocol") is not None and r["protocol"] not in protocols:
                raise ProtocolDataError(f"{DATA_FILE}: {where}.protocol: {r['protocol']!r} is not a protocol")
            if r["reference"] not in references:
                raise ProtocolDataError(f"{DATA_FILE}: {where}.reference: {r['reference']!r} is not a reference")
            releases[rid] = Release(rid, str(r["what"]), _sha(r.get("sha256"), where), str(r["model"]),
                                    int(r["resolution"]), r.get("protocol"), float(r["guidance"]), r["reference"],
                                    " ".join(str(r["unsupported"]).split()) if r.get("unsupported") else None)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProtocolDataError):
            raise
        raise ProtocolDataError(f"{DATA_FILE}: {where}: {type(exc).__name__}: {exc}") from None
    hashes = [f.sha256 for f in (*references.values(), *releases.values()) if f.sha256]
    if len(hashes) != len(set(hashes)):
        raise ProtocolDataError(f"{DATA_FILE}: a SHA-256 is recorded for two files")
    return Table(protocols, references, releases)


@functools.cache
def table() -> Table:
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))


def for_model(model: str) -> Protocol | None:
    """The protocol of the model's family (a model of no known family, or a family without one: None)."""
    try:
        family = models.family_of_model(model).name
    except KeyError:
        return None
    return table().protocols.get(family)


def releases_at(model: str, resolution: int) -> list[Release]:
    return [r for r in table().releases.values() if r.model == model and r.resolution == resolution]


def published_guidance(model: str, resolution: int) -> float | None:
    """The guidance s every release of ``model`` at ``resolution`` was published with; None when none is
    published there (or the releases disagree)."""
    scales = {r.guidance for r in releases_at(model, resolution)}
    return scales.pop() if len(scales) == 1 else None


def identify(sha256: str | None, declared: dict[str, str]) -> tuple[KnownFile | None, str]:
    """(the known file with this SHA-256, how it was identified): by this table's recorded hash, else by the
    suite's ``identify`` option ({sha256: id}: the user's declaration). (None, "") when neither knows it."""
    if not sha256:
        return None, ""
    t = table()
    for f in (*t.releases.values(), *t.references.values()):
        if f.sha256 == sha256:
            return f, f"SHA-256 recorded in dimbench/fid/{DATA_FILE}"
    fid = declared.get(sha256)
    if fid is not None:
        known = t.releases.get(fid) or t.references.get(fid)
        if known is not None:
            return known, "declared by options.fid.identify (the suite's word, not a recorded hash)"
    return None, ""


@dataclasses.dataclass(frozen=True)
class Ran:
    """What a fid row measured: the facts :func:`judge` compares with a release's protocol."""

    model: str
    resolution: int
    upsampled: bool
    checkpoint_sha256: str | None
    sampler: str
    steps: int
    skip: str | None
    guidance: float
    guided_channels: int | None
    labels: str
    samples: int
    inception_resize: str
    reference_sha256: str | None
    reference_resize: str | None  # recorded in a dimbench fid-stats file; None: not recorded in the file
    precision: str  # what ran (on the CPU: float32 whatever was asked)
    vae_precision: str | None  # None: pixel model, nothing decoded


@dataclasses.dataclass(frozen=True)
class Verdict:
    release: Release | None
    release_identified_by: str
    reference: Reference | None
    protocol: Protocol | None
    failed: tuple[str, ...]  # "item: why", one per check that failed

    @property
    def comparable(self) -> bool:
        return self.release is not None and not self.failed


def _checkpoint(ran: Ran, declared: dict[str, str]) -> tuple[Release | None, str, list[str]]:
    at = releases_at(ran.model, ran.resolution)
    known = ", ".join(r.id for r in at) or "none"
    if ran.upsampled:
        return None, "", [f"resolution: {ran.resolution} px by training-free upsampling; no FID is published there"]
    if not ran.checkpoint_sha256:
        return None, "", ["checkpoint: none (random weights)"]
    found, how = identify(ran.checkpoint_sha256, declared)
    if not isinstance(found, Release):
        return None, "", [f"checkpoint: SHA-256 {ran.checkpoint_sha256} is not a known release (releases of "
                          f"{ran.model} at {ran.resolution} px: {known}; dimbench/fid/{DATA_FILE} records no hash "
                          "for this file: name its release with options.fid.identify {sha256: release id})"]
    if (found.model, found.resolution) != (ran.model, ran.resolution):
        return found, how, [f"checkpoint: it is release {found.id} ({found.model} at {found.resolution} px), "
                            f"scored as {ran.model} at {ran.resolution} px"]
    return found, how, []


def judge(ran: Ran, declared: dict[str, str] | None = None) -> Verdict:
    """Whether ``ran`` measured what a published FID-50K did, and each item that differs."""
    declared = declared or {}
    release, how, failed = _checkpoint(ran, declared)
    t = table()
    protocol = t.protocols.get(release.protocol) if release and release.protocol else None
    reference = t.references.get(release.reference) if release else None
    if release is not None and release.unsupported:
        failed.append(f"protocol: {release.unsupported}")
    if protocol is None or failed:
        return Verdict(release, how, reference, protocol, tuple(failed))
    checks = (
        ("sampler", ran.sampler, protocol.sampler),
        ("step placement", ran.skip, protocol.skip),
        ("steps", ran.steps, protocol.steps),
        ("guidance", ran.guidance, release.guidance),
        ("guidance channels", ran.guided_channels, protocol.guided_channels),
        ("labels", ran.labels, protocol.labels),
        ("samples", ran.samples, protocol.samples),
        ("inception resize", ran.inception_resize, protocol.inception_resize),
        ("precision", ran.precision, protocol.precision),
    )
    for item, got, want in checks:
        same = math.isclose(got, want) if isinstance(want, float) else got == want
        if not same:
            failed.append(f"{item}: {_show(got)} ran, the protocol's is {_show(want)}")
    if ran.vae_precision is not None and ran.vae_precision != protocol.vae_precision:
        failed.append(f"VAE precision: {ran.vae_precision} ran, the protocol's is {protocol.vae_precision}")
    found, _ = identify(ran.reference_sha256, declared)
    if found is None:
        failed.append(f"reference: SHA-256 {ran.reference_sha256} is not a known reference file (the protocol's is "
                      f"{reference.file}; name it with options.fid.identify {{sha256: {reference.id}}})")
    elif found.id != reference.id:
        failed.append(f"reference: {found.id} ({getattr(found, 'file', found.what)}), the protocol's is "
                      f"{reference.id} ({reference.file})")
    if ran.reference_resize is not None and ran.reference_resize != ran.inception_resize:
        failed.append(f"reference: its statistics were made with the {ran.reference_resize} resize, the samples "
                      f"scored with {ran.inception_resize}")
    return Verdict(release, how, reference, protocol, tuple(failed))


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def published_fid(release_id: str):
    """The published FID (Decimal, as printed) of a release: the row of dimbench/paper/published.yaml's fid table
    that names it; None when the table has none."""
    fid = tables().get("fid")
    for row in fid.rows if fid else ():
        if row.details.get("release") == release_id:
            return row.values.get("fid")
    return None

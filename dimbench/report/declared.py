"""What the report asks of the declarations: nothing about a row or a model is guessed from its name.

Rows: a row's label, unit, whether it is divided by the batch, and whether (and as which measure) it is compared
across families are its registered metric's declaration (:func:`dimbench.metrics.row_declaration`). A row no
registered metric declares (results of another version, a plugin not loaded here) gets the generic declaration:
its own name as label, as measured.

Models: a model's family, its place in the report's order and its part in comparisons come from the model
registry (:mod:`models`). A model this installation does not register (results of another version) belongs to
no family: it is listed after the others, drawn in grey and never compared.
"""

from __future__ import annotations

import models
from dimbench.metrics import Row, declared_rows, row_declaration
from models import Family


def row(metric: str, unit: str | None = None) -> Row:
    """The declaration of a row name (``unit``: the recorded one, for a row nobody declares)."""
    return row_declaration(metric, unit or None)


def label(metric: str, per_image: bool = False) -> str:
    """The row's label; ``per_image``: its label once divided by the batch (when it is per pass)."""
    return row(metric).display(per_image)


def row_order() -> list[str]:
    """Every declared row name, in registration order (the order of the full tables)."""
    return [r.name for r in declared_rows()]


def ratio_rows() -> list[Row]:
    """The rows compared as subject / baseline (those that declare a ratio), in registration order."""
    return [r for r in declared_rows() if r.ratio is not None]


#: How the report names a variant of a model (a point with family options or a checkpoint, where the results hold
#: several variants of the model): ``dim_h_2 [pad=cyclic]``.
VARIANT = "{model} [{variant}]"


def model_name(label: str) -> str:
    """The registered model a report's model label stands for (:data:`VARIANT` -> the model)."""
    return str(label).split(" [", 1)[0]


def family(model: str) -> Family | None:
    """The registered family of a model name or variant label, or None for a model this installation does not
    register."""
    try:
        return models.family_of_model(model_name(model))
    except KeyError:
        return None


def family_slot(model: str) -> int | None:
    """The position of the model's family among the registered ones in display order (it picks the colour ramp
    and marker), None for an unregistered model."""
    fam = family(model)
    return None if fam is None else [f.name for f in models.list_families()].index(fam.name)


def has_role(model: str, role: str) -> bool:
    fam = family(model)
    return fam is not None and fam.role == role


def subjects() -> list[Family]:
    """The families compared against the baselines (DiM), in display order."""
    return [f for f in models.list_families() if f.role == "subject"]


def baselines() -> list[Family]:
    """The families the subject is compared with (DiT, then U-ViT), in display order."""
    return [f for f in models.list_families() if f.role == "baseline"]


def subject_name() -> str:
    """How the text names the subject: its display name ("DiM")."""
    return and_join([f.display for f in subjects()]) or "the subject family"


def and_join(names: list[str]) -> str:
    """``DiT and U-ViT``; ``A, B and C``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)

"""A metric of a test's own with a plotted row, declared in this one file and loaded as a plugin
(``--plugin toy_metric`` or ``DIMBENCH_PLUGINS=toy_metric``): its row, its option, the rule its options obey as a
whole and the report section that draws it against resolution are all stated here and nowhere else.
"""

from __future__ import annotations

from dimbench.metrics import Measurement, Metric, Plot, PlotSection, Row, register_metric
from dimbench.metrics.common import build_model
from dimbench.schema import Field, Integer

TOY_SECTION = PlotSection(
    "toy-weights", "Toy: weights per model", order=60,
    caption="Thousands of weights each model is built with vs resolution, {facet}. ",
    paragraphs=("Drawn from the toy metric's own declaration.",))


def toy_weights(point, ctx):
    """Weights of the model as the point builds it (its family options applied), counted on the meta device, plus
    one per input cell so the value grows with the resolution."""
    model = build_model(point, "meta")
    weights = sum(p.numel() for p in model.parameters()) + point.input_size ** 2
    return [Measurement("toy_kweights", weights / ctx.options["per"], None,
                        f"parameters on the meta device + input cells, / {ctx.options['per']}")]


class ToyMetric(Metric):
    def check_options(self, options, model_names, resolutions, batches=()):
        """Counting in thousands needs ``per`` to divide 1000 (a rule on the option as the suite sets it)."""
        if 1000 % options["per"]:
            return [("per", f"key 'options.toy_weights.per': expected a divisor of 1000, got {options['per']}")]
        return []


TOY_WEIGHTS = ToyMetric(
    name="toy_weights",
    rows=(Row("toy_kweights", "k", "toy weights (thousands)", task="count", deterministic=True,
              plot=Plot(TOY_SECTION, scale="linear")),),
    fn=toy_weights,
    description="a metric a test declares in one file, with a row the report plots",
    options=(Field("per", Integer(1), 1000, "weights per unit of the value"),),
)


def register() -> None:
    """The plugin entry point."""
    register_metric(TOY_WEIGHTS)

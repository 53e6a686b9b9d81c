"""A metric that measures nothing, for timing worker start-up alone (kept apart from the benchmark module so that
a worker imports nothing more than dimbench to unpickle it)."""

from dimbench.metrics import Measurement, Metric, Row
from dimbench.points import SweepPoint


def _nothing(point, ctx):
    return [Measurement("nothing", 0.0, None, "nothing measured: a worker start benchmark")]


NOTHING = Metric("nothing", (Row("nothing", "count", "nothing"),), _nothing, "measures nothing")
POINT = SweepPoint("bench", "dit_s_2", 32, 4, 1, "float32", "cpu", ("nothing",))

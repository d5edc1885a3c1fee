"""A synthetic shop run through the example journeys: ``touchline demo``.

:func:`run_demo` is what the command calls; :class:`Shop` is the event
generator, usable on its own to feed ``touchline simulate`` or tests.
"""

from touchline.demo.report import DemoReport
from touchline.demo.run import run_demo
from touchline.demo.shop import Shop

__all__ = ["DemoReport", "Shop", "run_demo"]

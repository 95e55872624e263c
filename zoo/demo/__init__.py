"""``zoo demo``, the README's main job: from the published base, a better model and a faster one, compared side by
side and exported as hub-ready folders (``run``), presented as a table and a plot (``report``)."""

from zoo.demo.models import BASE, DEMO_MODELS, DemoModel
from zoo.demo.report import demo_markdown, format_demo, plot_demo
from zoo.demo.run import demo_json, finished_run, run_demo

__all__ = ["BASE", "DEMO_MODELS", "DemoModel", "demo_json", "demo_markdown", "finished_run", "format_demo",
           "plot_demo", "run_demo"]  # fmt: skip

"""`adstream demo`'s parts: a local VAST upstream (`upstream`), the request stream
(`traffic`), the summary of the decisions (`summary`) and the run that ties them to a worker
(`run`). The sample campaigns (`campaigns.json`) and VAST documents (`vast/`) ship with it."""

from streams.demo.run import DemoFailed, DemoOptions, run_demo

__all__ = [
    "DemoFailed",
    "DemoOptions",
    "run_demo",
]

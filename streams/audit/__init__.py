"""`adstream audit`: replay the public topics and verify every decision from the events alone.

The package keeps what an audit checks apart from how it reads and how it reports:

| module | holds |
| --- | --- |
| `window.py` | the event-time window (`--from`, `--to`) and how times are written |
| `findings.py` | what goes in (`Record`) and what comes out (`Violation`, `Summary`) |
| `configs.py` | the history of `campaigns`: which configuration each `campaign_version` names |
| `verify.py` | the verifier (`Auditor`): pure, fed records, returns the summary and violations |
| `leases.py` | `budget-leases` folded; each served decision and lease checked against it (pure) |
| `reconcile.py` | the billing ledger against the served decisions (pure) |
| `replay.py` | reading the topics (read_committed, bounded by the end offsets seen at start) |
| `render.py` | the summary table and the JSON document |

The command itself is `streams/cli/audit.py`. Cap and budget arithmetic lives in
`streams.invariants`, the decision rules in `streams.state` and `models`: the audit applies
the worker's own definitions, never a copy of them.
"""

from streams.audit.findings import Record, Summary, Violation
from streams.audit.reconcile import reconcile
from streams.audit.replay import ReplayError, replay
from streams.audit.verify import Audit, Auditor
from streams.audit.window import Window

__all__ = [
    "Audit",
    "Auditor",
    "Record",
    "ReplayError",
    "Summary",
    "Violation",
    "Window",
    "reconcile",
    "replay",
]

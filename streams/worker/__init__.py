"""The decision worker: adstream's Kafka and Faust wiring around the pure rules.

    ad-requests (key: user) --route--> requests-by-campaign (key: campaign) --decide--> ad-served
                     |                         campaigns (key: campaign) --^       \\-> ad-denied
                     \\--> ad-requests-dlq

`route` validates and de-duplicates, on state keyed like the users' partitions. `decide`
owns everything per campaign: its rules, its budget, and the frequency caps of its users, so
a cap and a budget are checked and charged in one place, in one transaction.

| module | holds |
| --- | --- |
| `app.py` | the Faust app: tables, the two agents, the web routes |
| `route_stage.py`, `decide_stage.py` | the two stages (their rules are `streams.state`'s) |
| `outputs.py` | a stage's records, in its transaction; the per-message dead-letter boundary |
| `tables.py` | the Faust tables, typed |
| `commit_protocol.py` | outputs, table writes and offsets in one transaction per source partition |
| `kafka_transport.py` | Faust's Kafka transport, consumer and producer, as subclasses |
| `recovery.py` | table restores that read every changelog record, or exit |
| `skipped_events.py` | events Faust skips or clears, processed after all |
| `event_context.py` | which event a table access belongs to |
| `faust_version.py` | the faust-streaming release the subclasses were written for |
| `exit_status.py` | the exit status of a worker that cannot go on safely |
| `crash_journal.py` | setting aside a message that brings the process down |
| `local_state.py` | trusting RocksDB files only after a clean shutdown |
| `metrics.py` | the Prometheus metrics |
| `upstreams.py` | one VAST upstream per campaign configuration |
| `runner.py` | `adstream worker`: topics, then the Faust worker until stopped |
| `process.py` | a worker run as a child process (the demo, tests, benchmarks) |

Nothing here is imported by the offline commands (audit, billing, campaign files).
"""

from streams.worker.app import Worker, create_worker
from streams.worker.process import WorkerFailed, WorkerProcess
from streams.worker.runner import run, upstreams_for

__all__ = [
    "Worker",
    "WorkerFailed",
    "WorkerProcess",
    "create_worker",
    "run",
    "upstreams_for",
]

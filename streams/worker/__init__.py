"""The decision worker: adstream's Kafka and Faust wiring around the pure rules.

    ad-requests (key: user) --+                +--> ad-served / ad-denied / ad-requests-dlq
                              +--decide--------+
    budget-leases ------------+                +--> budget-leases (asks, returns, grants)
    campaigns --> every worker's campaign view;  --check--> ad-requests-dlq

`decide` handles partition p of `ad-requests` and of `budget-leases` as one stream: each
request on its user's partition (caps and dedupe are there), its cost spent from p's lease of
its campaign; the campaigns' banks answer their partitions' asks on the same stream.

| module | holds |
| --- | --- |
| `app.py` | the Faust app: tables, the agents, the web routes |
| `decide_stage.py` | the decision stage (its rules are `streams.state`'s), parked requests |
| `lease_desk.py` | budget leases and banks: their tables and their records on `budget-leases` |
| `campaign_view.py` | every campaign's rules, read from `campaigns` by every worker |
| `campaigns_stage.py` | invalid campaign records to the DLQ, once |
| `outputs.py` | a stage's records, in its transaction; the per-message dead-letter boundary |
| `tables.py` | the Faust tables, typed |
| `commit_protocol.py` | outputs, table writes and offsets in one transaction per source partition |
| `kafka_transport.py` | Faust's Kafka transport, consumer and producer, as subclasses |
| `assignor.py` | Faust's partition assignor, for static group membership |
| `recovery.py` | table restores that stream the changelogs and read every record, or exit |
| `skipped_events.py` | events Faust skips or clears, processed after all |
| `event_context.py` | which event a table access belongs to |
| `faust_version.py` | the faust-streaming release the subclasses were written for |
| `exit_status.py` | the exit status of a worker that cannot go on safely |
| `crash_journal.py` | setting aside a message that brings the process down |
| `committed_store.py` | the RocksDB store: committed writes only, with their changelog offsets |
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

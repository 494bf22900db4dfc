"""adstream's processing side: the decision worker, the VAST resolver and the CLI.

Its packages: `state` (the pure rules and the state they keep), `vast` (the VAST resolver),
`worker` (the Kafka and Faust wiring of the decision worker), `audit`, `billing`, `demo`
and `cli`; beside them the modules edges and operators use without a worker (`edge`,
`lookaside`, `admin`, `decision_reader`, `macros`, `settings`, `topics`).
"""

__all__: list[str] = []

"""How a worker that cannot go on ends."""

FAILED_EXIT = 70
"""The worker's exit status when it cannot go on safely (a stage failed mid-batch, a restore
missed changelog records): a supervisor restarts it, and it starts over as after a crash."""

"""adstream's processing side: the decision worker, the VAST resolver and the CLI."""

"""The ``trigger-hub`` command line: commands, the HTTP client, and deploy planning. It talks
to a hub over its API only (``serve`` is the one command that builds a hub)."""

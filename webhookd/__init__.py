"""webhookd: a self-hosted webhook sender in one process with one SQLite file."""

__version__ = "0.1.0"

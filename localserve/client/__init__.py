"""The typed HTTP client for the daemon; the CLI talks to the daemon only through it."""

from localserve.client.client import Client

__all__ = ["Client"]

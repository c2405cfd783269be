"""The typed HTTP client for the daemon; the CLI talks to the daemon only through it."""

from localserve.client.client import AsyncClient, Client
from localserve.client.types import (
    ChatResponse,
    GenerateResponse,
    ListedModel,
    Message,
    ModelDetails,
    ProgressResponse,
    RunningModel,
    ShowResponse,
)

__all__ = [
    "AsyncClient",
    "ChatResponse",
    "Client",
    "GenerateResponse",
    "ListedModel",
    "Message",
    "ModelDetails",
    "ProgressResponse",
    "RunningModel",
    "ShowResponse",
]

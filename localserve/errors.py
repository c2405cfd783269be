"""Every error localserve raises on purpose, as one tree.

Each surface turns these into words at exactly one edge (the CLI's error table,
the server's exception handlers); nothing below matches on message text.

    LocalserveError
    ├── InvalidReferenceError (ValueError)      a model name, tag, file name or digest we refuse
    ├── InvalidOptionError (ValueError)         a setting or option with a bad value
    ├── ModelNotFoundError (LookupError)        no manifest under that name
    ├── ResponseNotFoundError (LookupError)     no stored response under that id (/v1/responses)
    ├── TemplateError (ValueError)              a chat template that fails, or breaks the sandbox's caps
    ├── PromptTooLongError (ValueError)         a prompt that cannot fit the context
    ├── ServerBusyError                         the daemon's request queue is full (HTTP 503)
    ├── DaemonNotRunningError (ConnectionError)  nothing answers at LOCALSERVE_HOST
    ├── ModelTooLargeError                      the memory plan says it cannot fit (before loading)
    ├── EngineError                             llama.cpp refused to load a model or process a batch
    │   ├── RunnerCrashedError                   the runner process died (crash, abort, kill)
    │   └── RpcUnavailableError                  this llama-cpp-python has no RPC backend
    ├── StoreError
    │   ├── InvalidGGUFError (ValueError)        not a GGUF we are willing to hand to llama.cpp
    │   │   └── WrongGGUFKindError               a model where a projector belongs, or the reverse
    │   ├── DigestMismatchError                  bytes on disk do not hash to their digest
    │   ├── DamagedModelError                    a stored model's file changed since it was verified
    │   ├── DiskFullError (OSError)              no room to write a download or import
    │   └── ImportSourceError (OSError)          a file given to `import` we cannot read
    └── HubError
        ├── RepoNotFoundError (LookupError)      no such repository (or no access to it)
        ├── RevisionNotFoundError (LookupError)  no such branch, tag or commit
        ├── NoSuchFileError (LookupError)        the tag names no GGUF in the repository
        ├── GatedRepoError (PermissionError)     needs an accepted licence and a token
        ├── HubUnavailableError                  429/5xx or unreachable after retries
        └── DownloadInterruptedError             stopped part way; the partial is kept

``hint`` is the next step a person can take; the CLI prints it after the message.
"""

from __future__ import annotations


class LocalserveError(Exception):
    """Base of every error localserve raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidReferenceError(LocalserveError, ValueError):
    """A model name, tag, file name or digest that fails validation."""


class InvalidOptionError(LocalserveError, ValueError):
    """A setting or request option with a value we cannot use."""


class ModelNotFoundError(LocalserveError, LookupError):
    """No model is stored under the given name."""

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(f"model {name!r} not found", hint=hint or _missing_model_hint(name))
        self.name = name


def _missing_model_hint(name: str) -> str:
    """The next step that fits the name: a Hub reference (``OWNER/REPO``, ``hf.co/...``)
    can be pulled; a local name can only be one the user made."""
    if "/" in name:
        return f"pull it first: localserve pull {name}"
    return "see `localserve list` for the models you have, or `localserve import FILE NAME`"


class ResponseNotFoundError(LocalserveError, LookupError):
    """No response is stored under the given id: never stored (``store: false``),
    deleted, or dropped as the oldest to keep the responses' bounds."""

    def __init__(self, response_id: str) -> None:
        super().__init__(
            f"response {response_id!r} not found: it was not stored, was deleted, or was "
            "dropped as the oldest (LOCALSERVE_RESPONSES_MAX_COUNT, LOCALSERVE_RESPONSES_MAX_BYTES)"
        )
        self.response_id = response_id


class TemplateError(LocalserveError, ValueError):
    """A chat template that cannot be rendered safely: a syntax error, a raised
    exception, a sandbox violation, or a time or output cap exceeded."""


class PromptTooLongError(LocalserveError, ValueError):
    """A prompt longer than the context (after dropping what may be dropped).

    ``tokens`` and ``limit`` (the prompt's length and the context's, when known) let each
    API say it in the words its clients look for (OpenAI's ``context_length_exceeded``):
    coding agents compact the conversation and retry on that error, and give up on others.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        tokens: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.tokens = tokens
        self.limit = limit


class ServerBusyError(LocalserveError):
    """Too many requests are waiting; try again later."""


class DaemonNotRunningError(LocalserveError, ConnectionError):
    """No daemon answers at the configured address."""


class ModelTooLargeError(LocalserveError):
    """Not even RAM can hold the part of the model that stays on the CPU (plan/planner.py)."""

    def __init__(
        self, message: str, *, needed_bytes: int, available_bytes: int, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


class EngineError(LocalserveError):
    """llama.cpp refused to load a model or to process a batch."""


class RunnerCrashedError(EngineError):
    """The runner process died; its requests fail and the next request starts a new one."""


class RpcUnavailableError(EngineError):
    """The installed llama-cpp-python was built without llama.cpp's RPC backend."""


class StoreError(LocalserveError):
    """Something is wrong with the files in the model store."""


class InvalidGGUFError(StoreError, ValueError):
    """A file that is not a well-formed GGUF; ``reason`` says what is wrong in one line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: not a valid GGUF file: {reason}")
        self.path = path
        self.reason = reason


class WrongGGUFKindError(InvalidGGUFError):
    """A GGUF of the wrong kind for its place: a multimodal projector (mmproj) given as
    a model, or anything but a projector given as one. The file may be well formed;
    ``reason`` says what it is instead."""

    def __init__(self, path: str, reason: str, *, hint: str | None = None) -> None:
        StoreError.__init__(self, f"{path}: {reason}", hint=hint)
        self.path = path
        self.reason = reason


class DigestMismatchError(StoreError):
    """Downloaded or stored bytes do not hash to the expected sha256."""

    def __init__(self, what: str, expected: str, actual: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"sha256 mismatch for {what}: expected {expected}, got {actual}", hint=hint
        )
        self.expected = expected
        self.actual = actual


class DamagedModelError(StoreError):
    """A stored model's file is missing, or no longer what was verified when it came in.

    The message names the model and says how to repair it (pull it again, or import
    it again): over HTTP the message is all a client sees.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class DiskFullError(StoreError, OSError):
    """No space left while writing into the store."""


class ImportSourceError(StoreError, OSError):
    """A file given to `localserve import` that cannot be read."""


class HubError(LocalserveError):
    """Hugging Face refused or failed a request."""


class RepoNotFoundError(HubError, LookupError):
    """The repository does not exist, or is private and the token cannot see it."""


class RevisionNotFoundError(HubError, LookupError):
    """The branch, tag or commit does not exist in the repository."""


class NoSuchFileError(HubError, LookupError):
    """The requested quantization or file is not in the repository."""

    def __init__(self, message: str, *, available: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.available = available


class GatedRepoError(HubError, PermissionError):
    """The repository is gated: accept its terms on the Hub and set HF_TOKEN."""


class HubUnavailableError(HubError):
    """The Hub kept answering 429/5xx, or could not be reached."""


class DownloadInterruptedError(HubError):
    """A download stopped part way; its partial file is kept for the next pull to resume."""

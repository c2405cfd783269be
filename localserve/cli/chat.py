'''The interactive chat of `localserve run`: line editing, history, multi-line input, commands.

    >>> Send a message (/? for help)
    >>> """              a line starting with """ opens a multi-line message,
    ... more text        and a line ending with """ closes it
    ... """

Slash commands change the session (``/set``), describe the model (``/show``), switch
models (``/load``), forget the conversation (``/clear``) or leave (``/bye``, Ctrl+D).
Ctrl+C at the prompt clears the line; during an answer it stops the answer (and the
generation on the daemon) and comes back to the prompt. History is kept across
sessions in ``<state dir>/history``.
'''

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from localserve.cli import options
from localserve.cli.answer import Conversation, Spinner
from localserve.cli.errors import report

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from rich.console import Console

    from localserve.client import Client, ShowResponse

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'
PLACEHOLDER = "Send a message (/? for help)"

HELP = '''Available commands:
  /set            Set session variables
  /show           Show model information
  /load MODEL     Load another model (starts a new conversation)
  /clear          Clear the conversation
  /bye            Exit (or Ctrl+D)
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use """ to begin a multi-line message.
'''

SET_HELP = """Available commands:
  /set parameter KEY VALUE   Set a model option (/set parameter to list them)
  /set system TEXT           Set the system message
  /set system \"\"\"            ...a multi-line one, up to a line ending with \"\"\"
  /set format json           Answer in JSON
  /set noformat              Answer in plain text again
  /set verbose               Show timings after each answer
  /set quiet                 Do not show timings
  /set wordwrap              Break lines between words
  /set nowordwrap            Do not break lines
  /set think [LEVEL]         Let a thinking model think (LEVEL: low, medium, high)
  /set nothink               Answer without thinking
  /set hidethinking          Think, but do not show it
  /set nohidethinking        Show the thinking again
"""

SHOW_HELP = """Available commands:
  /show info         Details of this model
  /show parameters   Options set in this session and by the model
  /show template     The model's chat template
  /show system       The system message
  /show license      The model's licence
"""

SHORTCUTS_HELP = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line
  Ctrl + e            Move to the end of the line
  Ctrl + k            Delete to the end of the line
  Ctrl + u            Delete to the beginning of the line
  Up / Down           Earlier and later messages (history)
  Ctrl + c            Stop the answer; clear the line
  Ctrl + d            Exit
"""

PARAMETER_HELP = """Parameters:
  /set parameter seed INT            Random seed (-1: a new one each time)
  /set parameter num_predict INT     Most tokens to generate (-1: no limit)
  /set parameter num_ctx INT         Context window size (reloads the model)
  /set parameter temperature FLOAT   Higher is more creative (0: always the likeliest)
  /set parameter top_k INT           Sample from the k likeliest tokens
  /set parameter top_p FLOAT         Sample from the smallest set with this total probability
  /set parameter min_p FLOAT         Drop tokens below this share of the likeliest one
  /set parameter repeat_penalty FLOAT   Penalize repeated tokens
  /set parameter repeat_last_n INT   How far back repeat_penalty looks
  /set parameter stop STRING ...     Stop sequences
"""


def _opens_system_block(line: str) -> bool:
    """A /set system line that opens a fence and does not close it: more lines follow."""
    return line.lower().startswith("/set system") and line.count(FENCE) == 1


def chat(client: Client, conversation: Conversation, history: Path) -> None:
    """Run the chat until /bye or Ctrl+D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    from localserve.cli import output

    # The history holds everything typed into chats: owner-only, like a shell's.
    history.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    history.touch(mode=0o600, exist_ok=True)
    session: PromptSession[str] = PromptSession(history=FileHistory(str(history)))
    err = output.stderr()
    load_model(client, conversation, err)
    Chat(client, conversation, session, sys.stdout, err).loop()


def load_model(client: Client, conversation: Conversation, err: Console) -> None:
    """Load the model before the first prompt, so the first answer starts at once."""
    with Spinner(err):
        client.load(
            conversation.model, options=conversation.options, keep_alive=conversation.keep_alive
        )


class Chat:
    """The read-answer loop and its slash commands, over one Conversation."""

    def __init__(
        self,
        client: Client,
        conversation: Conversation,
        session: PromptSession[str],
        out: TextIO,
        err: Console,
    ) -> None:
        self.client = client
        self.conversation = conversation
        self.session = session
        self.out = out
        self.err = err
        self.commands: dict[str, Callable[[list[str]], bool]] = {
            "/set": self.set,
            "/show": self.show,
            "/load": self.load,
            "/clear": self.clear,
            "/bye": lambda _: False,
            "/exit": lambda _: False,
            "/?": self.help,
            "/help": self.help,
        }

    def say(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    # ---------------------------------------------------------------- input

    def read(self) -> str | None:
        """One message or command; None when Ctrl+C abandoned the input. EOFError on Ctrl+D."""
        from prompt_toolkit.formatted_text import FormattedText

        placeholder = FormattedText([("fg:ansibrightblack", PLACEHOLDER)])
        try:
            line = self.session.prompt(PROMPT, placeholder=placeholder)
        except KeyboardInterrupt:
            self.say("Use Ctrl + d or /bye to exit.")
            return None
        stripped = line.lstrip()
        if stripped.startswith(FENCE):
            # Multi-line: everything up to a line that ends with the closing fence.
            return self._read_fenced(stripped[len(FENCE) :])
        if _opens_system_block(stripped):
            # `/set system """` then lines, as in Ollama: the command gets the block.
            head, _, first = stripped.partition(FENCE)
            body = self._read_fenced(first)
            return None if body is None else f"{head}{FENCE}{body}{FENCE}"
        return line.strip()

    def _read_fenced(self, first: str) -> str | None:
        """The text after an opening fence, up to a line ending with the closing one."""
        if first.rstrip().endswith(FENCE):
            return first.rstrip()[: -len(FENCE)]
        lines = [first] if first else []
        while True:
            try:
                # (A session remembers the last call's arguments: no placeholder here.)
                more = self.session.prompt(CONTINUATION, placeholder=None)
            except KeyboardInterrupt:
                return None
            if more.rstrip().endswith(FENCE):
                lines.append(more.rstrip()[: -len(FENCE)])
                return "\n".join(lines).strip("\n")
            lines.append(more)

    def loop(self) -> None:
        while True:
            try:
                text = self.read()
            except EOFError:
                self.say("")
                return
            if not text:
                continue
            try:
                if text.startswith("/") and (
                    "\n" not in text or text.lower().startswith("/set system")
                ):
                    if not self.command(text):
                        return
                    continue
                self.conversation.ask(self.client, text, self.out, self.err)
                self.say("")  # a blank line between the answer and the next prompt
            except KeyboardInterrupt:  # during /load or /show: back to the prompt
                self.say("")
            except Exception as exc:  # an error ends one turn, never the chat
                report(exc)

    # ------------------------------------------------------------- commands

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave the chat."""
        name, *args = line.split()
        if name.lower() == "/set" and args and args[0].lower() == "system":
            # The text as typed: a multi-line system message keeps its line breaks.
            return self.set_system(line.split(None, 2)[2] if len(args) > 1 else "")
        handler = self.commands.get(name.lower())
        if handler is None:
            self.say(f"Unknown command '{name}'. Type /? for help")
            return True
        return handler(args)

    def help(self, args: list[str]) -> bool:
        topic = args[0].lower().lstrip("/") if args else ""
        texts = {"set": SET_HELP, "show": SHOW_HELP, "shortcuts": SHORTCUTS_HELP}
        self.say(texts.get(topic, HELP))
        return True

    def set_system(self, text: str) -> bool:
        text = text.strip()
        if text.startswith(FENCE) and text.endswith(FENCE) and len(text) >= 2 * len(FENCE):
            text = text[len(FENCE) : -len(FENCE)].strip()
        if not text:
            self.say('Usage: /set system TEXT, or /set system """ and lines up to """')
            return True
        self.conversation.system = text
        self.say("Set system message.")
        return True

    def set(self, args: list[str]) -> bool:
        c = self.conversation
        what = args[0].lower() if args else ""
        if what == "parameter":
            if len(args) < 3:
                self.say(PARAMETER_HELP)
                return True
            c.options = options.set_option(c.options, args[1], args[2:])
            self.say(f"Set parameter '{args[1]}' to '{' '.join(args[2:])}'")
        elif what == "format" and len(args) == 2 and args[1].lower() == "json":
            c.format = "json"
            self.say("Set format to 'json' mode.")
        elif what == "noformat":
            c.format = None
            self.say("Disabled format.")
        elif what in ("verbose", "quiet"):
            c.verbose = what == "verbose"
            self.say("Set 'verbose' mode." if c.verbose else "Set 'quiet' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            c.wordwrap = what == "wordwrap"
            self.say("Set 'wordwrap' mode." if c.wordwrap else "Set 'nowordwrap' mode.")
        elif what == "think" and len(args) <= 2:
            level = args[1].lower() if len(args) == 2 else None
            if level is not None and level not in ("low", "medium", "high"):
                self.say("Usage: /set think [low|medium|high]")
                return True
            c.think = level or True
            self.say(f"Set 'think' mode{f' to {level}' if level else ''}.")
        elif what == "nothink":
            c.think = False
            self.say("Set 'nothink' mode.")
        elif what in ("hidethinking", "nohidethinking"):
            c.hide_thinking = what == "hidethinking"
            self.say(f"Set '{what}' mode.")
        else:
            self.say(SET_HELP)
        return True

    def show(self, args: list[str]) -> bool:
        what = args[0].lower() if args else ""
        if what not in ("info", "parameters", "template", "system", "license", "modelfile"):
            self.say(SHOW_HELP)
            return True
        c = self.conversation
        facts = self.client.show(c.model)
        if what == "info":
            self.say(_info(facts))
        elif what == "parameters":
            self.say(self._parameters(facts))
        elif what == "template":
            self.say(facts.template or "No chat template was specified for this model.")
        elif what == "system":
            self.say(c.system or facts.system or "No system message was specified for this model.")
        elif what == "license":
            self.say(facts.license or "No license was specified for this model.")
        else:
            self.say(facts.modelfile)
        return True

    def _parameters(self, facts: ShowResponse) -> str:
        lines: list[str] = []
        if self.conversation.options:
            lines.append("User defined parameters:")
            for key, value in sorted(self.conversation.options.items()):
                lines.append(f"  {key:<16}{options.describe(value)}")
        if facts.parameters.strip():
            lines.append("Model defined parameters:")
            lines += [f"  {line}" for line in facts.parameters.strip().splitlines()]
        return "\n".join(lines) or "No parameters were specified for this model."

    def load(self, args: list[str]) -> bool:
        if len(args) != 1:
            self.say("Usage: /load MODEL")
            return True
        previous = self.conversation.model
        self.say(f"Loading model '{args[0]}'")
        self.conversation.model = args[0]
        try:
            load_model(self.client, self.conversation, self.err)
        except BaseException:  # Ctrl+C included: stay with the model that works
            self.conversation.model = previous
            raise
        self.conversation.messages = []
        return True

    def clear(self, args: list[str]) -> bool:
        self.conversation.messages = []
        self.say("Cleared session context")
        return True


def _info(facts: ShowResponse) -> str:
    rows = [
        ("architecture", facts.details.family),
        ("parameters", facts.details.parameter_size),
        ("context length", facts.info("context_length")),
        ("embedding length", facts.info("embedding_length")),
        ("quantization", facts.details.quantization_level),
    ]
    lines = ["  Model"]
    lines += [f"    {label:<20}{value}" for label, value in rows if value not in (None, "")]
    projector = facts.projector_info
    if projector:
        rows = [
            ("type", projector.get("clip.projector_type")),
            ("parameters", projector.get("general.parameter_count")),
            ("image size", projector.get("clip.vision.image_size")),
            ("patch size", projector.get("clip.vision.patch_size")),
        ]
        lines += ["", "  Projector"]
        lines += [f"    {label:<20}{value}" for label, value in rows if value not in (None, "")]
    if facts.capabilities:
        lines += ["", "  Capabilities"] + [f"    {c}" for c in facts.capabilities]
    return "\n".join(lines)

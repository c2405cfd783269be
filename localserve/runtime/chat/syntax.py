"""What detection finds out about a template's calls and thinking (the data only;
:mod:`.formats` and :mod:`.learn` find it, :mod:`.parse` and the engine's
``tool_grammar`` use it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FormatKind = Literal[
    "hermes",  # <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    "qwen3_coder",  # <tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>
    "mistral",  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
    "mistral_args",  # [TOOL_CALLS]NAME[ARGS]{...} (optionally [CALL_ID]id before [ARGS])
    "llama3",  # {"name": ..., "parameters": {...}} as the whole answer (<|python_tag|>)
    "deepseek",  # <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>...<｜tool▁call▁end｜>...
    "harmony",  # <|channel|>commentary to=functions.NAME ... <|message|>{...}
    "generic",  # PREFIX{"name": ..., "arguments": {...}}SUFFIX, learnt from the template
    "tagged",  # markers around the name and the arguments, learnt from the template
    "pythonic",  # <|tool_call_start|>[NAME(key="value", ...)]<|tool_call_end|> (LFM2)
    "gemma4",  # <|tool_call>call:NAME{key:<|"|>value<|"|>,...}<tool_call|>
    # Muse's channels: each call its own message, `` to=NAME<|message|>`` then
    # <atem:function_calls><atem:invoke name="NAME"><atem:parameter name="K">V</...>
    "muse",
]

# Muse's messages: ``<|start|>assistant to=RECIPIENT<|message|>BODY<|eom|>`` (more
# follows in the turn) or ``<|eot|>`` (the turn's end); ``self`` is reasoning, ``user``
# the answer, any other recipient a call.
MUSE_START = "<|start|>assistant"
MUSE_MESSAGE = "<|message|>"
MUSE_MORE = "<|eom|>"
MUSE_END = "<|eot|>"
MUSE_TAGS = ("<|start|>", MUSE_MESSAGE, MUSE_MORE, MUSE_END)  # each one token
ATEM_CALLS_OPEN = "<atem:function_calls>"
ATEM_CALLS_CLOSE = "</atem:function_calls>"

DEEPSEEK_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DEEPSEEK_CALLS_END = "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DEEPSEEK_CALL_END = "<｜tool▁call▁end｜>"
DEEPSEEK_SEP = "<｜tool▁sep｜>"

# Slots in a learnt marker: text the model writes that differs from call to call.
ID_SLOT = "\ue000"  # the call's id (Solar Open: <|tool_call:begin|>ID<|tool_call:name|>)
INDEX_SLOT = "\ue001"  # the call's number (Kimi K2: functions.NAME:0)
# The argument's key, in a value's closing tag (MiniMax-M3: <city>Paris</city>).
KEY_SLOT = "\ue002"
SLOTS = (ID_SLOT, INDEX_SLOT, KEY_SLOT)

# A tag as templates write them: <...>, [...], <|...|>, <｜...｜>.
TAG = re.compile(r"(<[^<>\s]{1,40}>|\[[A-Z_/]{2,40}\])")


@dataclass(frozen=True)
class TaggedSyntax:
    """A call syntax made of literal text around the function name and the arguments,
    learnt from what the template writes for sample calls::

        section_open
          call_open NAME name_close ARGUMENTS call_close
          separator call_open NAME ...
        section_close

    The arguments are a JSON object, or (``key_open`` set) one block per argument:
    ``key_open KEY key_close VALUE value_close``, where a string VALUE is raw text and
    any other value JSON. Some templates tell the type in the block
    (``string="true"``/``string="false"``, ``type="number"``): ``typed_key_close``
    holds the ``key_close`` for each JSON type where it differs from a string's.
    Literals may hold ``ID_SLOT``/``INDEX_SLOT`` for what changes per call, and
    ``value_close`` ``KEY_SLOT`` for a closing tag named after the key (MiniMax-M3's
    ``<city>Paris</city>``, whose object and array values nest the same way)."""

    section_open: str = ""
    call_open: str = ""
    name_close: str = ""
    call_close: str = ""
    separator: str = ""
    section_close: str = ""
    key_open: str = ""
    key_close: str = ""
    typed_key_close: tuple[tuple[str, str], ...] = ()
    value_close: str = ""

    @property
    def tagged_arguments(self) -> bool:
        return bool(self.key_open)

    @property
    def lead(self) -> str:
        """The literal that starts the calls (what a lazy grammar waits for)."""
        return lead_literal(self.section_open or self.call_open)

    def literals(self) -> tuple[str, ...]:
        return (
            self.section_open,
            self.call_open,
            self.name_close,
            self.call_close,
            self.section_close,
            self.key_open,
            self.key_close,
            *(close for _, close in self.typed_key_close),
            self.value_close,
        )

    def key_close_for(self, json_type: str) -> str:
        return dict(self.typed_key_close).get(json_type, self.key_close)


def lead_literal(text: str) -> str:
    """``text`` up to its first slot, without surrounding blanks."""
    for slot in SLOTS:
        text = text.split(slot, maxsplit=1)[0]
    return text.strip()


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes tool calls."""

    kind: FormatKind
    # Text that starts a call (or the section of calls); the first is the one the
    # grammar writes. Empty for llama3, whose calls are bare JSON.
    starts: tuple[str, ...] = ()
    end: str = ""  # text that ends one call (or the section); "" = the answer's end
    arguments_key: str = "arguments"  # "parameters" for Llama 3
    # DeepSeek: "r1" (function<sep>NAME then a ```json block) or "v3.1" (NAME<sep>{...}).
    variant: str = ""
    # Generic JSON calls: the key of the name ("" when the name is the object's only
    # key, as Apertus writes {"NAME": {...}}), of a call id, whether the calls sit in
    # a JSON array, and whether the template renders more than one call.
    name_key: str = "name"
    id_key: str = ""
    array: bool = False
    parallel: bool = True
    syntax: TaggedSyntax | None = None  # the "tagged" kind's markers
    # The generation prompt already wrote the first call's opening (Functionary
    # v3.2's ">>>"): the answer starts with a name, or with ``text_name`` ("all")
    # for plain text.
    opened: str = ""
    text_name: str = ""
    # What the template writes after a turn's calls in place of its end of turn: the
    # tag the model stops at for the results (Gemma 4's ``<|tool_response>``).
    after_calls: str = ""

    @property
    def markers(self) -> tuple[str, ...]:
        """Every literal this format writes (for special tokens that must be kept)."""
        extra: tuple[str, ...] = ()
        if self.kind == "mistral_args":
            extra = ("[ARGS]", "[CALL_ID]")
        elif self.kind == "deepseek":
            extra = (DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_SEP)
        elif self.kind == "harmony":
            extra = ("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|constrain|>")
        elif self.kind == "llama3":
            extra = ("<|python_tag|>",)
        elif self.kind == "gemma4":
            extra = ('<|"|>',)
        elif self.kind == "muse":
            extra = MUSE_TAGS
        elif self.syntax is not None:
            found: list[str] = []
            for literal in self.syntax.literals():
                for piece in re.split("|".join(SLOTS), literal):
                    found += [piece.strip(), *TAG.findall(piece)]
            extra = tuple(dict.fromkeys(found))
        return tuple(m for m in (*self.starts, self.end, *extra, self.after_calls) if m)


@dataclass(frozen=True)
class ThinkingTags:
    """The tags around a model's reasoning."""

    open: str
    close: str

"""Chat templates written for the tests, one per tool-call family, in each family's
format (the call syntax is a fact of the family; these template texts are ours).
They go on the tiny generated model and on Gemma 3 270M with the gguf metadata writer.
"""

from __future__ import annotations

# Hermes 2 Pro / Qwen 2.5: ChatML, tools listed in the system turn, calls in
# <tool_call> blocks, results in <tool_response> blocks.
HERMES = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You may call functions. Signatures:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call> to call one.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{%- if message.role != 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Qwen 3: Hermes calls plus <think> reasoning; enable_thinking=false closes an empty
# block in the prompt.
QWEN3 = (
    HERMES.replace(
        """{%- elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}""",
        """{%- elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{% if message.content %}""",
    )
    .replace(
        """{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{%- if message.role != 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>""",
        """{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{%- if message.role != 'system' %}<|im_start|>{{ message.role }}
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content }}<|im_end|>""",
    )
    .replace(
        """{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}""",
        """{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}""",
    )
)

# DeepSeek R1 style: the generation prompt opens the thinking block, so the answer
# holds only </think>. No tools.
R1 = """{{ bos_token }}{%- for message in messages %}
{%- if message.role == 'user' %}<｜User｜>{{ message.content }}
{%- elif message.role == 'assistant' %}<｜Assistant｜>{{ message.content.split('</think>')[-1] }}<｜end▁of▁sentence｜>
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<｜Assistant｜><think>
{% endif %}"""

# Llama 3.1: tools in the user turn, a call is a bare JSON object, results come
# back in the ipython role.
LLAMA3 = """{{ bos_token }}{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{%- for call in message.tool_calls %}{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}{% endfor %}<|eot_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{% if tools and loop.last and message.role == 'user' %}Given the following functions, respond with a JSON for a function call with its proper arguments.

{% for tool in tools %}{{ tool | tojson }}

{% endfor %}{% endif %}{{ message.content }}<|eot_id|>
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

# Mistral v0.3 / Nemo: [AVAILABLE_TOOLS] before the last user turn, calls as one
# JSON array after [TOOL_CALLS].
MISTRAL = """{{ bos_token }}{%- for message in messages %}
{%- if message.role == 'user' %}{% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ message.content }}[/INST]
{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS][{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}
{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{"content": {{ message.content | tojson }}}[/TOOL_RESULTS]
{%- endif %}{%- endfor %}"""

# Mistral v11+ (Small 3.2, Devstral): [TOOL_CALLS]name[ARGS]{...} per call.
MISTRAL_ARGS = MISTRAL.replace(
    """[TOOL_CALLS][{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}""",
    """{% for call in message.tool_calls %}[TOOL_CALLS]{{ call.function.name }}[ARGS]{{ call.function.arguments | tojson }}{% endfor %}{{ eos_token }}""",
)

# Qwen3-Coder: XML calls with one <parameter=...> block per argument.
QWEN3_CODER = HERMES.replace(
    """{%- for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}""",
    """{%- for call in message.tool_calls %}<tool_call>
<function={{ call.function.name }}>
{% for key, value in call.function.arguments.items() %}<parameter={{ key }}>
{{ value if value is string else value | tojson }}
</parameter>
{% endfor %}</function>
</tool_call>
{% endfor %}""",
)

# gpt-oss (harmony): channels for reasoning (analysis), calls (commentary) and the
# answer (final).
HARMONY = """<|start|>system<|message|>You are a helpful assistant.
Reasoning: {{ reasoning_effort | default('medium') }}
# Valid channels: analysis, commentary, final.<|end|>
{%- if tools %}<|start|>developer<|message|># Tools
namespace functions {
{% for tool in tools %}// {{ tool.function.description }}
type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;
{% endfor %}}<|end|>{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}<|start|>user<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'assistant' and message.tool_calls %}
{%- if message.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>{% endif %}
{%- for call in message.tool_calls %}<|start|>assistant<|channel|>commentary to=functions.{{ call.function.name }} <|constrain|>json<|message|>{{ call.function.arguments | tojson }}<|call|>{% endfor %}
{%- elif message.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'tool' %}<|start|>functions.{{ message.name }} to=assistant<|channel|>commentary<|message|>{{ message.content }}<|end|>
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""

# DeepSeek V3.1: NAME<｜tool▁sep｜>{args} inside the calls section.
DEEPSEEK = """{{ bos_token }}{%- for message in messages %}
{%- if message.role == 'user' %}<｜User｜>{% if tools and loop.last %}## Tools
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}{% endif %}{{ message.content }}
{%- elif message.role == 'assistant' and message.tool_calls %}<｜Assistant｜></think><｜tool▁calls▁begin｜>{% for call in message.tool_calls %}<｜tool▁call▁begin｜>{{ call.function.name }}<｜tool▁sep｜>{{ call.function.arguments | tojson }}<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜><｜end▁of▁sentence｜>
{%- elif message.role == 'assistant' %}<｜Assistant｜></think>{{ message.content }}<｜end▁of▁sentence｜>
{%- elif message.role == 'tool' %}<｜tool▁output▁begin｜>{{ message.content }}<｜tool▁output▁end｜>
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<｜Assistant｜></think>{% endif %}"""

# A family we have no parser for (Granite 3 style): calls as a JSON list after a tag
# of its own. Detection learns the tag from the template.
GENERIC = """{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|start_of_role|>assistant<|end_of_role|><|tool_call|>[{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]<|end_of_text|>
{% else %}<|start_of_role|>{{ message.role }}<|end_of_role|>{% if tools and message.role == 'user' and loop.last %}Tools: {{ tools | tojson }}
{% endif %}{{ message.content }}<|end_of_text|>
{% endif %}{%- endfor %}
{%- if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"""

# Plain ChatML: no tools, no thinking.
CHATML_PLAIN = """{% for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

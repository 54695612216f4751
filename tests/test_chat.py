"""lmblocks.tokenize.chat against its oracle, Hugging Face transformers' own
`apply_chat_template(..., tokenize=False)`, given the same template string and special tokens: real
templates from real model files (SmolLM2-135M-Instruct's GGUF; Gemma 3 270M's GGUF for its special
tokens), synthetic templates that use each global and filter transformers defines, and bad input."""

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("jinja2")
from lmblocks.tokenize import gguf_metadata  # noqa: E402
from lmblocks.tokenize.chat import ChatTemplate  # noqa: E402


# Gemma 3 instruct's chat template, as google/gemma-3-*-it's tokenizer_config.json carries it (and
# transformers' convert_gemma3_weights.py writes it); the 270M base GGUF ships none.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is 2+2?"}],
    "system_multi_turn": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Name a prime.\nJust one."}],
    "unicode": [{"role": "user",
                 "content": "Ünïcödé 🦙 我想在 нещо ١٢ \u200d e\u0301 <b>&amp;</b> \"q\" 'a'"},
                {"role": "assistant", "content": "😶‍🌫️ ok\u2028"}, {"role": "user", "content": "\u00a0\t"}],
    "empty_content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""},
                      {"role": "user", "content": ""}],
    "assistant_last": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "  hi  \n"}],
    "none_valued_keys": [{"role": "user", "content": "x", "name": None},
                         {"role": "assistant", "content": "y", "tool_calls": None}],
}


# --- the oracle ----------------------------------------------------------------------------------

_oracles: dict = {}


def hf_render(template: str, specials: dict, messages, **kwargs) -> str:
    """transformers' rendering: a fast tokenizer whose special tokens are `specials` (a one-word vocabulary;
    rendering never tokenizes), `apply_chat_template(..., tokenize=False)`."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    key = tuple(sorted(specials.items()))
    if key not in _oracles:
        _oracles[key] = transformers.PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), **specials)
    return _oracles[key].apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def assert_same(ct: ChatTemplate, messages, **kwargs):
    ours = ct.render(messages, **kwargs)
    kwargs.setdefault("add_generation_prompt", True)  # our default; transformers' is False
    assert ours == hf_render(ct.template, ct.specials, messages, **kwargs)
    return ours


# --- real model files ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2_md(smollm2_path):
    return gguf_metadata(smollm2_path)


@pytest.fixture(scope="session")
def gemma3_md(gemma3_path):
    return gguf_metadata(gemma3_path)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_smollm2_gguf_template(smollm2_md, conv, add_generation_prompt):
    ct = ChatTemplate.from_gguf_metadata(smollm2_md)
    assert ct.template == smollm2_md["tokenizer.chat_template"]
    assert (ct.specials["bos_token"], ct.specials["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    out = assert_same(ct, CONVERSATIONS[conv], add_generation_prompt=add_generation_prompt)
    assert out.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_smollm2_list_content_is_a_template_error(smollm2_md):
    # ChatML concatenates content as a string: list content is the template's problem, reported as such.
    ct = ChatTemplate.from_gguf_metadata(smollm2_md)
    with pytest.raises(ValueError, match="chat template failed.*TypeError"):
        ct.render([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def test_gemma3_gguf_specials(gemma3_md):
    with pytest.raises(ValueError, match="no 'tokenizer.chat_template'"):
        ChatTemplate.from_gguf_metadata(gemma3_md)  # the base model carries no template
    ct = ChatTemplate.from_gguf_metadata({**gemma3_md, "tokenizer.chat_template": GEMMA3_TEMPLATE})
    assert (ct.specials["bos_token"], ct.specials["eos_token"], ct.specials["pad_token"]) == ("<bos>", "<eos>", "<pad>")


GEMMA_EXTRA = {
    "multimodal_parts": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe. "}]}],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", list(CONVERSATIONS) + list(GEMMA_EXTRA))
def test_gemma3_template(gemma3_md, conv, add_generation_prompt):
    ct = ChatTemplate.from_gguf_metadata({**gemma3_md, "tokenizer.chat_template": GEMMA3_TEMPLATE})
    messages = {**CONVERSATIONS, **GEMMA_EXTRA}[conv]
    out = assert_same(ct, messages, add_generation_prompt=add_generation_prompt)
    assert out.startswith("<bos>")


def test_gemma3_template_raises(gemma3_md):
    ct = ChatTemplate.from_gguf_metadata({**gemma3_md, "tokenizer.chat_template": GEMMA3_TEMPLATE})
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        ct.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- synthetic templates: each global, filter and setting --------------------------------------

SYNTHETIC = {
    "tojson": "{{ messages | tojson }}|{{ tools | tojson }}|{{ messages[0] | tojson(indent=2) }}|"
              "{{ messages | tojson(separators=(',', ':')) }}|"
              "{{ {'b': 1, 'a': [1.5, none, true]} | tojson(sort_keys=true) }}|"
              "{{ messages[0] | tojson(ensure_ascii=true) }}",
    "loop": "{% for m in messages %}{{ loop.index0 }}/{{ loop.length }}:{{ m.role }}{% if not loop.last %}, "
            "{% endif %}{% if loop.first %}[first]{% endif %}{% endfor %}",
    "loop_controls": "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                     "{{ m.content }};{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}",
    "namespace": "{% set ns = namespace(n=0, last='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                 "{% set ns.last = m.role %}{% endfor %}{{ ns.n }} {{ ns.last }}",
    "dict_global": "{% set d = dict(a=1, b=messages[0].role) %}{{ d | tojson }} "
                   "{{ dict.fromkeys(['x', 'y'], 0) | tojson }}",
    "whitespace": "{{ bos_token }}\n{% for message in messages %}\n    {% if message['role'] == 'user' %}\n"
                  "        {{ '[U] ' + message['content'] | trim }}\n    {% else %}\n        {{ message['content'] }}\n"
                  "    {% endif %}\n{% endfor %}\n{%- if add_generation_prompt %}\n    <gen>\n{% endif %}",
    "generation_tag": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                      "{{ eos_token }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "undefined_and_kwargs": "[{{ bos_token }}][{{ unk_token }}][{{ no_such_var }}][{{ documents }}]"
                            "[{{ enable_thinking | default('unset') }}]{{ messages[0].content }}",
    "content_parts": "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
                     "{% for p in m.content %}{{ p.text if p.type == 'text' else '<' + p.type + '>' }}{% endfor %}"
                     "{% endif %}|{% endfor %}",
    "tools": "{% if tools %}{% for t in tools %}{{ t.function.name }}={{ t | tojson }}\n{% endfor %}{% endif %}"
             "{{ messages[-1].content }}",
    "reasoning": "{% for m in messages %}{{ m.role }}:{{ m.reasoning_content | default('-') }}/"
                 "{{ m.thinking | default('-') }}/{{ m.content }}\n{% endfor %}",
}
MIXED = [SYSTEM, {"role": "user", "content": "Grüße, 世界 <&> \"q\" 🦙"}, {"role": "assistant", "content": "ok"},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "this"}]}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für einen Ort",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_template(name, add_generation_prompt):
    ct = ChatTemplate(SYNTHETIC[name], bos_token="<s>", eos_token="</s>")
    messages = MIXED if name in ("tojson", "content_parts", "loop", "namespace") else MIXED[:3]
    if name == "reasoning":
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "hmm"},
                    {"role": "assistant", "content": "b", "thinking": "t"}]
    assert_same(ct, messages, add_generation_prompt=add_generation_prompt, tools=TOOLS)


def test_tojson_is_not_html_escaped_nor_ascii():
    out = ChatTemplate("{{ messages[0].content | tojson }}").render([{"role": "user", "content": "<é>&'"}])
    assert out == json.dumps("<é>&'", ensure_ascii=False)


def test_kwargs_override_specials_and_none_leaves_undefined():
    ct = ChatTemplate("{{ bos_token is defined }}{{ eos_token }}{{ extra }}", bos_token=None, eos_token="</s>")
    msgs = [{"role": "user", "content": "x"}]
    assert assert_same(ct, msgs) == "False</s>"
    assert assert_same(ct, msgs, eos_token="<E>", extra=7) == "False<E>7"


def test_strftime_now():
    ct = ChatTemplate("Today: {{ strftime_now('%d %b %Y') }}")
    before = datetime.now()
    ours = ct.render([{"role": "user", "content": "x"}])
    theirs = hf_render(ct.template, ct.specials, [{"role": "user", "content": "x"}])
    after = datetime.now()
    assert re.fullmatch(r"Today: \d\d [A-Z][a-z]{2} \d{4}", ours)
    days = {(before + timedelta(seconds=s)).strftime("Today: %d %b %Y") for s in (0, (after - before).seconds + 1)}
    assert ours in days and theirs in days


@pytest.mark.parametrize("field", [True, "reasoning_content"])
def test_continue_final_message(field):
    ct = ChatTemplate("{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content %}[{{ m.reasoning_content }}]"
                      "{% endif %}{{ m.content }}</{{ m.role }}>\n{% endfor %}")
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "The answer is ", "reasoning_content": "think "}]
    out = assert_same(ct, msgs, add_generation_prompt=False, continue_final_message=field)
    assert out.endswith("The answer is " if field is True else "[think ")


# --- tokenizer_config.json ------------------------------------------------------------------------

def test_from_tokenizer_config(tmp_path):
    tpl = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    cfg = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False}, "eos_token": "</s>",
           "pad_token": None, "chat_template": tpl}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ct = ChatTemplate.from_tokenizer_config(tmp_path / "tokenizer_config.json")
    assert ct.specials == {"bos_token": "<s>", "eos_token": "</s>"}
    assert assert_same(ct, [{"role": "user", "content": "hi"}]) == "<s>hi</s>"

    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": tpl + "!"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert ChatTemplate.from_tokenizer_config(tmp_path).template == tpl + "!"
    assert ChatTemplate.from_tokenizer_config(tmp_path, name="tool_use").template == "T"
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template named 'default'"):
        ChatTemplate.from_tokenizer_config(tmp_path)

    del cfg["chat_template"]  # recent transformers saves the template beside the config
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    assert ChatTemplate.from_tokenizer_config(tmp_path).render([{"role": "user", "content": "x"}]) == "Jx"


# --- bad input ------------------------------------------------------------------------------------

def test_syntax_error():
    with pytest.raises(ValueError, match=r"syntax error at line 2"):
        ChatTemplate("ok\n{% for m in messages %}{{ m.content }}")
    with pytest.raises(ValueError, match="syntax error"):
        ChatTemplate("{{ messages[0 }}")
    with pytest.raises(TypeError):
        ChatTemplate(None)


def test_raise_exception():
    ct = ChatTemplate("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
                      "{% endif %}{{ messages[0].content }}")
    with pytest.raises(ValueError, match="raised an exception: System role not supported"):
        ct.render([SYSTEM])
    jinja2 = pytest.importorskip("jinja2")
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        hf_render(ct.template, ct.specials, [SYSTEM])  # the oracle fails on the same input
    assert assert_same(ct, [{"role": "user", "content": "fine"}]) == "fine"


def test_sandbox():
    with pytest.raises(ValueError, match="SecurityError"):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="underscore"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("messages, exc, match", [
    ("hello", TypeError, "must be a list"),
    ({"role": "user", "content": "x"}, TypeError, "must be a list"),
    ([], ValueError, "empty conversation"),
    ([{"role": "user", "content": "x"}, "hi"], TypeError, "message 1"),
    ([{"role": "user", "content": "x"}, {"content": "y"}], ValueError, "message 1 has no 'role'"),
    ([{"role": 1, "content": "x"}], TypeError, "message 0: 'role'"),
    ([{"role": "user", "content": 5}], TypeError, "message 0 .*'content' must be a str"),
    ([{"role": "user"}], ValueError, "message 0 .*no 'content'"),
    ([{"role": "user", "content": None}], TypeError, "message 0 .*None"),
    ([{"role": "user", "content": ["hi"]}], TypeError, "message 0: content part 0"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], TypeError, "message 0: text content part 0"),
])
def test_bad_messages(messages, exc, match):
    with pytest.raises(exc, match=match):
        ChatTemplate("{{ messages }}").render(messages)


def test_assistant_tool_call_without_content():
    ct = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content | default('') }}"
                      "{% for c in m.tool_calls | default([]) %}"
                      "{{ c.function.name }}({{ c.function.arguments | tojson }})"
                      "{% endfor %}\n{% endfor %}")
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function",
                             "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]}]
    assert "get_weather" in assert_same(ct, msgs, tools=TOOLS)


def test_gguf_metadata_errors():
    md = {"tokenizer.chat_template": "x", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.bos_token_id": 5}
    with pytest.raises(ValueError, match="bos_token_id = 5 is outside"):
        ChatTemplate.from_gguf_metadata(md)
    md = {"tokenizer.chat_template.tool_use": "T{{ bos_token }}", "tokenizer.ggml.tokens": ["a", "<s>"],
          "tokenizer.ggml.bos_token_id": 1}
    with pytest.raises(ValueError, match="named templates: \\['tool_use'\\]"):
        ChatTemplate.from_gguf_metadata(md)
    assert ChatTemplate.from_gguf_metadata(md, name="tool_use").render([{"role": "user", "content": "x"}]) == "T<s>"
    assert ChatTemplate.from_gguf_metadata(md, ["z", "<B>"], name="tool_use").specials == {"bos_token": "<B>"}


def test_none_valued_keys_are_dropped():
    ct = ChatTemplate("{% for m in messages %}{{ m | tojson }}{{ 'tool_calls' in m }}\n{% endfor %}")
    assert "null" not in assert_same(ct, CONVERSATIONS["none_valued_keys"])

"""Chat templates rendered exactly as Hugging Face transformers renders them (`apply_chat_template(...,
tokenize=False)`): the same sandboxed Jinja environment (trim_blocks, lstrip_blocks, loop controls,
`{% generation %}`), the same globals (`raise_exception`, `strftime_now`, `namespace`, `dict`), the same
`tojson` filter (no HTML escaping; indent, separators, sort_keys, ensure_ascii=False), and the same
preparation of the inputs (message keys whose value is None dropped, reasoning fields aliased, special
tokens passed as variables that keyword arguments override, `tools` and `documents` always defined).

>>> from lmblocks.tokenize.chat import ChatTemplate
>>> t = ChatTemplate("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
...                  "{% if add_generation_prompt %}<|assistant|>{% endif %}", eos_token="</s>")
>>> t.render([{"role": "user", "content": "Hi"}])
'<|user|>Hi</s><|assistant|>'

From a model file: `ChatTemplate.from_gguf_metadata(gguf_metadata("model.gguf"))`, or
`ChatTemplate.from_tokenizer_config("tokenizer_config.json")`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # as transformers aliases them
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _jinja():
    try:
        import jinja2
    except ImportError as e:
        raise ImportError("chat templates need jinja2>=3.1.6: pip install 'jinja2>=3.1.6'") from e
    if tuple(int(x) for x in jinja2.__version__.split(".")[:3] if x.isdigit()) < (3, 1, 6):
        # Older versions have known sandbox escapes, and chat templates from the Hub are untrusted code.
        raise ImportError(f"chat templates need jinja2>=3.1.6 (sandbox fixes); found {jinja2.__version__}")
    return jinja2


@lru_cache(maxsize=1)
def _environment():
    """The environment transformers' `_compile_jinja_template` builds (transformers 5.x), built once."""
    jinja2 = _jinja()
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class RaisedByTemplate(jinja2.exceptions.TemplateError):
        """What `raise_exception(...)` raises: transformers raises a TemplateError with the message."""

    class Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers' assistant masks;
        # rendering is unaffected, so the body is emitted as is.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise RaisedByTemplate(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not, and takes these options.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        # `dict(...)` and `dict.fromkeys(...)` without exposing the dict type itself.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Namespaces reject underscore attributes, so templates cannot reach CPython internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    env.raised_by_template = RaisedByTemplate
    return env


def _plain(value: Any) -> Any:
    """Inputs rebuilt from plain JSON-like types, as transformers' `_plain_template_data` does: the sandbox
    then sees no methods of rich objects, and anything else becomes a placeholder naming its type."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _plain(value.item())  # NumPy scalars: np.bool_(False) must stay falsy
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation; give at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m:
            raise ValueError(f"message {i} has no 'role'")
        if not isinstance(m["role"], str):
            raise TypeError(f"message {i}: 'role' must be a str, got {type(m['role']).__name__}")
        content = m.get("content")
        if content is None:
            if "content" not in m and not m.get("tool_calls"):
                raise ValueError(f"message {i} ({m['role']}) has no 'content'")
            if "content" in m and not m.get("tool_calls"):
                raise TypeError(f"message {i} ({m['role']}): 'content' is None; only a message with "
                                "'tool_calls' may leave it out")
        elif isinstance(content, (list, tuple)):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    raise TypeError(f"message {i}: content part {j} must be a dict such as "
                                    f"{{'type': 'text', 'text': ...}}, got {type(part).__name__}")
                if part.get("type", "text") == "text" and not isinstance(part.get("text"), str):
                    raise TypeError(f"message {i}: text content part {j} needs a str 'text'")
        elif not isinstance(content, str):
            raise TypeError(f"message {i} ({m['role']}): 'content' must be a str or a list of content parts, "
                            f"got {type(content).__name__}")


def _template_line(tb) -> int | None:
    """The template line a render error came from (Jinja rewrites tracebacks to show template frames)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class ChatTemplate:
    """A Jinja chat template, rendered the way transformers' `tokenizer.apply_chat_template(messages,
    tokenize=False, ...)` renders it.

    `bos_token`, `eos_token` and any `extra_specials` (`unk_token="<unk>"`, ...) are template variables, as
    transformers passes the tokenizer's special tokens; None leaves a variable undefined (as a tokenizer
    without that token does). Keyword arguments of `render` override them.

    >>> t = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}",
    ...                  bos_token="<s>")
    >>> t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    '<s>user: Hi\\n'
    """

    def __init__(self, template: str, *, bos_token: str | None = "", eos_token: str | None = "",
                 **extra_specials: str | None):
        if not isinstance(template, str):
            raise TypeError(f"template must be a str, got {type(template).__name__}")
        jinja2 = _jinja()
        self.template = template
        specials = {"bos_token": bos_token, "eos_token": eos_token, **extra_specials}
        self.specials = {k: str(v) for k, v in specials.items() if v is not None}
        env = _environment()
        try:
            self._compiled = env.from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat template syntax error at line {e.lineno}: {e.message}") from e
        self._raised = env.raised_by_template

    # --- constructors from model files ---------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, md: dict, tokens: Sequence[str] | None = None, *, name: str | None = None
                           ) -> "ChatTemplate":
        """The template of a GGUF file (`tokenizer.chat_template`, or `tokenizer.chat_template.<name>`),
        with bos/eos (and unk/pad/sep/mask) text looked up from their ids in `tokens` (by default the
        file's `tokenizer.ggml.tokens`).

        >>> md = {"tokenizer.chat_template": "{{ bos_token }}{{ messages[0]['content'] }}",
        ...       "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"], "tokenizer.ggml.bos_token_id": 1}
        >>> ChatTemplate.from_gguf_metadata(md).render([{"role": "user", "content": "Hi"}])
        '<s>Hi'
        """
        key = "tokenizer.chat_template" + (f".{name}" if name else "")
        template = md.get(key)
        if template is None:
            named = sorted(k[len("tokenizer.chat_template."):] for k in md if k.startswith("tokenizer.chat_template."))
            raise ValueError(f"the GGUF metadata has no {key!r}" + (f"; named templates: {named}" if named else
                             " (a base model without a chat template?)"))
        if tokens is None:
            tokens = md.get("tokenizer.ggml.tokens", ())
        specials = {}
        for attr, meta in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                           ("unk_token", "unknown_token_id"), ("sep_token", "seperator_token_id"),
                           ("pad_token", "padding_token_id"), ("mask_token", "mask_token_id")):
            i = md.get("tokenizer.ggml." + meta)
            if i is None:
                specials[attr] = None
                continue
            i = int(i)
            if not 0 <= i < len(tokens):
                raise ValueError(f"tokenizer.ggml.{meta} = {i} is outside the vocabulary of {len(tokens)} tokens")
            specials[attr] = tokens[i]
        return cls(template, **specials)

    @classmethod
    def from_tokenizer_config(cls, path, *, name: str = "default") -> "ChatTemplate":
        """The template of a Hugging Face `tokenizer_config.json` (a file, or the folder holding it).

        The template is a string, or a list of `{"name", "template"}` entries of which `name` is taken
        ("default" unless told); a folder's `chat_template.jinja`, where present, is the template as
        recent transformers saves it. Special tokens may be strings or AddedToken dicts.
        """
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config_path = path / "tokenizer_config.json" if path.is_dir() else path
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        template = config.get("chat_template")
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file() and (path.is_dir() or template is None):
            template = jinja_file.read_text(encoding="utf-8")
        if isinstance(template, list):
            by_name = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            if name not in by_name:
                raise ValueError(f"{config_path} has no chat template named {name!r}; it has {sorted(by_name)}")
            template = by_name[name]
        if template is None:
            raise ValueError(f"{config_path} has no chat_template")

        def text(tok):
            return tok.get("content") if isinstance(tok, Mapping) else tok

        specials = {k: text(config.get(k)) for k in _SPECIAL_NAMES}
        return cls(template, **specials)

    # --- rendering -----------------------------------------------------------------------------------

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, tools: list[dict] | None = None,
               documents: list[dict] | None = None, continue_final_message: bool | str = False, **kwargs) -> str:
        """The conversation as text, byte-identical to transformers' `apply_chat_template(messages,
        tokenize=False, ...)` with the same arguments. `kwargs` are extra template variables
        (`enable_thinking=False`, ...). Raises TypeError/ValueError naming a malformed message, and
        ValueError for any error the template raises (its `raise_exception(...)` message included)."""
        _check_messages(messages)
        if tools is not None:
            if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
                raise TypeError("tools must be a list of JSON-schema dicts")
        if documents is not None and not all(isinstance(d, Mapping) for d in documents):
            raise TypeError("documents must be a list of dicts with 'title' and 'text' keys")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible")

        # transformers drops the keys whose value is None, then rebuilds everything from plain types.
        chat = _plain([{k: v for k, v in m.items() if v is not None} for m in messages])
        chat = [self._alias_reasoning(m) for m in chat]
        variables = _plain({**self.specials, **kwargs})
        tools, documents = _plain(tools), _plain(documents)

        final = None
        if continue_final_message:
            final = self._tag_final_message(chat, continue_final_message)
        try:
            text = self._compiled.render(messages=chat, tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except self._raised as e:
            raise ValueError(f"the chat template raised an exception: {e.message}") from e
        except Exception as e:
            line = _template_line(sys.exc_info()[2])
            where = f" at line {line}" if line is not None else ""
            raise ValueError(f"the chat template failed{where}: {type(e).__name__}: {e}") from e
        if final is not None:
            text = self._cut_at_tag(text, final)
        return text

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.template)} chars, specials={self.specials})"

    @staticmethod
    def _alias_reasoning(m: dict) -> dict:
        # Fill `reasoning_content` (the standard name) and `thinking` (gpt-oss) from whichever is given.
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        return m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning}

    def _tag_final_message(self, chat: list, field: bool | str) -> str:
        """Append a tag to the final message's text, as transformers does, so the rendering can be cut there."""
        field = field if isinstance(field, str) else "content"
        final = chat[-1].get(field)
        if final is None:
            raise ValueError(f"continue_final_message is set but the final message has no {field!r} to continue")
        fields = [field]
        if field in _REASONING_FIELDS:
            fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
        if not any(f in self.template for f in fields):
            raise ValueError(f"continue_final_message is set to {field!r} but the chat template does not use it")
        if isinstance(final, (list, tuple)):
            for block in reversed(final):
                if "text" in block:
                    final = block["text"]
                    block["text"] = block["text"] + _CONTINUE_TAG
                    break
            else:
                raise ValueError("continue_final_message is set but the final message has no text to continue")
        else:
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
        return final

    @staticmethod
    def _cut_at_tag(text: str, final: str) -> str:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise ValueError("continue_final_message is set but the template dropped (part of) the final message")
        at = text.rindex(tag)
        return text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()


__all__ = ["ChatTemplate"]

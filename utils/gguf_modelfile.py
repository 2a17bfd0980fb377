"""The chat side of a GGUF export (utils.gguf_export): the end-of-turn token a chat template writes, and an Ollama
Modelfile whose TEMPLATE translates the ChatML and Llama-3 forms (with the template's default system prompt as
SYSTEM) and whose stop words end a turn. Other templates are left to the one embedded in the GGUF file.
"""

from __future__ import annotations

import re
from typing import Optional

MARK = "\u2063MARK\u2063"  # a content no template changes, to find where messages sit in the rendered text


def render_chat(hf, messages, generation_prompt: bool) -> str:
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def end_of_turn_token(hf) -> Optional[str]:
    """The special token the chat template writes right after an assistant's answer (<|im_end|>, <|eot_id|>, ...)."""
    if not getattr(hf, "chat_template", None):
        return None
    text = render_chat(hf, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": MARK}], False)
    after = text[text.rindex(MARK) + len(MARK):]
    return next((t for t in sorted(hf.all_special_tokens + list(hf.get_added_vocab()), key=len, reverse=True)
                 if t and after.startswith(t)), None)


def modelfile_text(filename: str, hf) -> tuple[str, list[str]]:
    """An Ollama Modelfile for the file: its chat template translated to Ollama's template language for the ChatML
    and Llama-3 forms (with the template's default system prompt as SYSTEM), else left to the embedded template;
    the end-of-turn and end-of-text tokens as stop words. Also notes to print."""
    lines = ["# Ollama: ollama create NAME -f Modelfile   (written by the kit's GGUF export)", f"FROM ./{filename}"]
    notes = []
    form, system = _template_form(hf)
    if form is not None:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[form]}"""')
        if system:
            lines.append(f'SYSTEM """{system}"""')
    elif getattr(hf, "chat_template", None):
        lines.append("# No TEMPLATE: the chat template is not ChatML or Llama-3, so Ollama derives one from the "
                     "template embedded in the GGUF (tokenizer.chat_template); check its answers")
        notes.append("Note: the Modelfile has no TEMPLATE (the chat template is neither ChatML nor Llama-3); "
                     "llama-cli -cnv uses the embedded template itself")
    for stop in dict.fromkeys(t for t in (end_of_turn_token(hf), hf.eos_token) if t):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n", notes


OLLAMA_TEMPLATES = {
    "chatml": "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n",
    "llama3": "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
              "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
}
_FORMS = {  # form: (user turn with MARK, generation prompt, system turn pattern)
    "chatml": (f"<|im_start|>user\n{MARK}<|im_end|>\n", "<|im_start|>assistant\n",
               r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n"),
    "llama3": (f"<|start_header_id|>user<|end_header_id|>\n\n{MARK}<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
}


def _template_form(hf) -> tuple[Optional[str], str]:
    """("chatml" | "llama3" | None, the default system prompt the template adds when none is given)."""
    if not getattr(hf, "chat_template", None):
        return None, ""
    text = render_chat(hf, [{"role": "user", "content": MARK}], True)
    for form, (user, prompt, system) in _FORMS.items():
        if user in text and text.endswith(prompt):
            found = re.search(system, text[:text.index(user)], re.S)
            return form, found.group(1) if found else ""
    return None, ""

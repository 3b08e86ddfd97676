"""modules/infotext_utils.py: how generation parameters are written (`key: value`, joined
by ", ", values with , : or newlines JSON-quoted) and read back."""

import json
import re

_pair = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def create_infotext(prompt, negative_prompt, params):
    """The three lines the WebUI writes: prompt, negative prompt, parameters."""
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_generation_parameters(text):
    *lines, last = text.strip().split("\n")
    if len(_pair.findall(last)) < 3:
        lines.append(last)
        last = ""
    res = {}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    for key, value in _pair.findall(last):
        try:  # as the WebUI: `v[0]` fails on an empty value, and the key is dropped ("Error parsing")
            res[key] = unquote(value) if value[0] == '"' and value[-1] == '"' else value
        except IndexError:
            print(f'Error parsing "{key}: {value}"')
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)
    return res

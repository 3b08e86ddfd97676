"""modules/prompt_parser.py: conditioning schedules, AND prompts and SDXL dict conds.

Scheduling covers non-nested `[from:to:when]`, `[to:when]` and `[from::when]` with
`when` a step or a share of the steps, read by the host's old or new timelines
(`use_old_scheduling`; new ones: "0.5" is a share, and a hires pass counts whole
numbers from the first pass's start).
"""

import re
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])

_edit = re.compile(r"\[([^\[\]:]*):([^\[\]:]*):\s*([0-9.]+)\s*\]|\[([^\[\]:]*):\s*([0-9.]+)\s*\]")


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def _timeline(base_steps, hires_steps, use_old_scheduling):
    """(steps, end of an edit given as text): the host's rule, old and new timelines —
    new ones read "0.5" as a share of the steps and, in a hires pass, whole numbers as
    counted from the first pass's start."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def end(text):
        v = float(text)
        if use_old_scheduling:
            v = v * steps if v < 1 else v
        else:
            v = (v - flt_offset) * steps if "." in text else v - int_offset
        return min(steps, int(v))

    return steps, end


def _at_step(prompt, step, end):
    def pick(m):
        if m.group(3) is not None:
            before, after, when = m.group(1), m.group(2), m.group(3)
        else:
            before, after, when = "", m.group(4), m.group(5)
        return before if step <= end(when) else after

    return _edit.sub(pick, prompt)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    steps, end = _timeline(base_steps, hires_steps, use_old_scheduling)
    out = []
    for prompt in prompts:
        ends = set()
        for m in _edit.finditer(prompt):
            e = end(m.group(3) if m.group(3) is not None else m.group(5))
            if 1 <= e < steps:
                ends.add(e)
        ends = sorted(ends) + [steps]
        out.append([[e, _at_step(prompt, e, end)] for e in ends])
    return out


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res = []
    cache = {}
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    for prompt, schedule in zip(prompts, schedules, strict=True):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        entries = []
        for i, (end, _) in enumerate(schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            entries.append(ScheduledPromptConditioning(end, cond))
        cache[prompt] = entries
        res.append(entries)
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    flat = SdConditioning(prompts)
    flat.clear()
    index_of = {}
    per_prompt = []
    for prompt in prompts:
        parts = []
        for sub in re_AND.split(prompt):
            text, weight = re_weight.search(sub).groups()
            weight = float(weight) if weight is not None else 1.0
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            parts.append((index_of[text], weight))
        per_prompt.append(parts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], w) for i, w in parts] for parts in per_prompt]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def reconstruct_cond_batch(c, current_step):
    conds = [_first_match(schedule, current_step) for schedule in c]
    if isinstance(conds[0], dict):
        return DictWithShape({k: torch.stack([x[k] for x in conds]) for k in conds[0]})
    return torch.stack(conds)


def _first_match(schedule, step):
    # The host takes the first entry whose end is not before the step, else the first.
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    return schedule[0].cond


def _stack_padded(tensors):
    longest = max(t.shape[0] for t in tensors)
    padded = [torch.cat([t, t[-1:].repeat(longest - t.shape[0], 1)]) if t.shape[0] < longest else t for t in tensors]
    return torch.stack(padded)


def reconstruct_multicond_batch(c, current_step):
    tensors = []
    conds_list = []
    for parts in c.batch:
        row = []
        for part in parts:
            row.append((len(tensors), part.weight))
            tensors.append(_first_match(part.schedules, current_step))
        conds_list.append(row)
    if isinstance(tensors[0], dict):
        stacked = {k: _stack_padded([t[k] for t in tensors]) if tensors[0][k].dim() == 2 else torch.stack([t[k] for t in tensors])
                   for k in tensors[0]}
        return conds_list, DictWithShape(stacked)
    return conds_list, _stack_padded(tensors)

"""What Prompt Fusion (ljleb/prompt-fusion-extension, scripts/promptlang.py) does to
conditioning: it replaces `prompt_parser.get_learned_conditioning` (setting on by
default) with a wrapper that unpacks the two optional arguments the WebUI always passes
(`hires_steps, use_old_scheduling, *_ = args if args else (None, True)` — so a call with
only `hires_steps` raises), and that reads its interpolation syntax `[a:b:start,end]`:
the cond moves linearly from a's to b's between those steps, one schedule entry per step.
"""

import re

from modules import prompt_parser

_INTERPOLATION = re.compile(r"\[([^\[\]:]*):([^\[\]:]*):\s*(\d+)\s*,\s*(\d+)\s*\]")


class PromptFusion:
    def install(self):
        self.original = prompt_parser.get_learned_conditioning
        original = self.original

        def get_learned_conditioning(model, prompts, total_steps, *args, **kwargs):
            hires_steps, use_old_scheduling, *_ = args if args else (None, True)
            steps = hires_steps or total_steps
            out = []
            for prompt in prompts:
                m = _INTERPOLATION.search(prompt)
                if m is None:
                    out.extend(original(model, prompt_parser.SdConditioning([prompt], copy_from=prompts),
                                        total_steps, hires_steps, use_old_scheduling))
                    continue
                texts = [prompt[:m.start()] + m.group(i) + prompt[m.end():] for i in (1, 2)]
                a, b = original(model, prompt_parser.SdConditioning(texts, copy_from=prompts), total_steps,
                                hires_steps, use_old_scheduling)
                start, end = int(m.group(3)), max(int(m.group(4)), int(m.group(3)) + 1)
                entries = []
                for step in range(1, steps + 1):
                    t = min(max((step - start) / (end - start), 0.0), 1.0)
                    ca, cb = a[0].cond, b[0].cond
                    cond = {k: ca[k] + (cb[k] - ca[k]) * t for k in ca} if isinstance(ca, dict) else ca + (cb - ca) * t
                    entries.append(prompt_parser.ScheduledPromptConditioning(step, cond))
                out.append(entries)
            return out

        prompt_parser.get_learned_conditioning = get_learned_conditioning

    def uninstall(self):
        prompt_parser.get_learned_conditioning = self.original

"""comfy/sd.py `CLIP`: `tokenize(text, return_word_ids=False)` → {"l": [77 (token, weight[, word
id]) tuples: start, the text's tokens, end padding]}; `encode_from_tokens_scheduled(tokens)` →
CONDITIONING [[cond [1, 77, D], {"pooled_output": [1, D]}]]. Over the tiny models' byte-level
tokenizer and text encoder; `encoded` (stand-in only) logs each encoding. Not mirrored: prompt
weights and embeddings (ComfyUI's tokenizer reads them from the text SEGA hands it unchanged),
prompts over 75 tokens, hooks schedules."""

import torch

START, END = 0, 1


class CLIP:
    def __init__(self, ldm):
        self.ldm = ldm
        self.encoded: list[list[int]] = []

    def tokenize(self, text, return_word_ids=False, **kwargs):
        ids = self.ldm.tokenizer(text, add_special_tokens=False).input_ids[:75]
        tokens = [(START, 1.0, 0)] + [(t, 1.0, i + 1) for i, t in enumerate(ids)]
        tokens += [(END, 1.0, 0)] * (77 - len(tokens))
        return {"l": [[tok if return_word_ids else tok[:2] for tok in tokens]]}

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):  # noqa: B006
        ids = [t[0] for t in tokens["l"][0]]
        self.encoded.append(ids)
        encoder = self.ldm.text_encoder
        with torch.no_grad():
            cond = encoder(torch.tensor([ids], device=encoder.device))[0]
        return [[cond, {"pooled_output": cond.mean(dim=1), **add_dict}]]

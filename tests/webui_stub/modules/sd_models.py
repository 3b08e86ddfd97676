"""modules/sd_models.py: checkpoints and `reload_model_weights`, as the refiner uses them.

Mirrors WebUI 1.10.1's loading rules that decide which model object the WebUI runs after a
load: with `sd_checkpoints_limit` 1 a checkpoint of the same architecture (config) is loaded
into the current object (`load_model_weights`, which leaves `cond_stage_model_empty_prompt`
as it was), another architecture gets a new object (`load_model`, which computes it anew);
with a higher limit each checkpoint keeps its own object. `reload_model_weights()` without
`info` loads the selected checkpoint (`opts.sd_model_checkpoint`), and does nothing when the
current model already is that checkpoint. A checkpoint "file" here is a function that builds
a model with that checkpoint's weights (`CheckpointInfo.build`); nothing is read from disk.
"""

from __future__ import annotations

import copy

from modules import shared

checkpoints_list: dict = {}
checkpoint_aliases: dict = {}
_objects: dict = {}  # model_data.loaded_sd_models with a limit > 1: title -> its object
_weights: dict = {}  # title -> a model holding that checkpoint's weights, never run


class CheckpointInfo:
    def __init__(self, title: str, build, config: str):
        self.title = title
        self.name = title
        self.short_title = title
        self.name_for_extra = title
        self.filename = f"/models/Stable-diffusion/{title}.safetensors"
        self.build = build
        self.config = config


class SkipWritingToConfig:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def register(info: CheckpointInfo) -> CheckpointInfo:
    checkpoints_list.setdefault(info.title, info)
    checkpoint_aliases.setdefault(info.title, checkpoints_list[info.title])
    return checkpoints_list[info.title]


def get_closet_checkpoint_match(name):  # sic, the WebUI's name
    return checkpoint_aliases.get(name)


def select_checkpoint():
    return checkpoint_aliases.get(getattr(shared.opts, "sd_model_checkpoint", None))


def _weights_of(info):
    if info.title not in _weights:
        _weights[info.title] = info.build()
    return _weights[info.title]


def _load_into(model, info):
    # load_model_weights: the state dict only; cond_stage_model_empty_prompt is an attribute
    # in the WebUI, computed by load_model alone, so it stays the previous checkpoint's.
    state = {k: v for k, v in _weights_of(info).state_dict().items() if k != "cond_stage_model_empty_prompt"}
    model.load_state_dict(state, strict=False)
    model.sd_checkpoint_info = info
    model.sd_model_checkpoint = info.filename
    return model


def load_model(info):
    model = copy.deepcopy(_weights_of(info))
    model.sd_checkpoint_info = info
    model.sd_model_checkpoint = info.filename
    model.used_config = info.config
    return model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    info = info or select_checkpoint()
    current = sd_model or shared.sd_model
    if info is None:
        return current
    if current is not None and getattr(current, "sd_checkpoint_info", None) is info and not forced_reload:
        return current
    if shared.opts.sd_checkpoints_limit > 1:
        model = _objects.get(info.title)
        if model is None:
            model = _objects[info.title] = load_model(info)
        elif model.sd_checkpoint_info is not info:  # a later load with limit 1 reused it
            _load_into(model, info)
    elif current is not None and getattr(current, "used_config", None) == info.config:
        model = _load_into(current, info)
    else:
        model = load_model(info)
    shared.sd_model = model
    return model


def forget() -> None:
    """Test helper: drop every loaded object, as a restart of the WebUI would."""
    _objects.clear()

"""SEGA as a ComfyUI node pack, in the ComfyUI 0.8.0 stand-in (tests/comfy_stub) with the tiny
models: loading, the nodes' validation, SEGA off is the host's own image, one batched call per
step, the term against a float64 recomputation from the call's own outputs, fresh state per
run, CFG 1 and Flux's distilled guidance, BasicGuider, another pack replacing the batched call."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import textwrap

import comfy_host as host
import pytest
import torch
import webui

from sega import spaces
from sega.args import SegaArgs
from sega_comfy import nodes as sega_nodes
from sega_comfy.patch import WRAPPER_KEY

DEFAULTS = dict(scale=5.0, threshold=0.95, warmup="0", cooldown="", weight=1.0, momentum_scale=0.3,
                momentum_beta=0.6)


def sega(model, clip, concepts, negative=None, extra=None, **settings):
    values = {**DEFAULTS, **settings}
    return sega_nodes.SegaGuidanceNode().apply(model, clip, concepts, negative=negative,
                                               concept_conditionings=extra, **values)[0]


# ---- loading -------------------------------------------------------------------------------

LOAD_AS_COMFY = textwrap.dedent("""
    import importlib.util, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    {prelude}
    root = sys.argv[1]
    # ComfyUI's load_custom_node: the folder's __init__.py as a package named by its path.
    name = root.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, root + "/__init__.py", submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    print("NODES", sorted(module.NODE_CLASS_MAPPINGS), sorted(module.NODE_DISPLAY_NAME_MAPPINGS.values()))
    print("SEGA_FROM", getattr(sys.modules.get("sega"), "__file__", None))
    print("WEBUI", sorted(m for m in sys.modules if m.split(".")[0] in ("modules", "gradio", "sega_webui")))
""")


def _load_as_comfy(prelude: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", LOAD_AS_COMFY.format(prelude=prelude), str(webui.ROOT)],
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_comfyui_loads_the_folder_as_a_node_pack_without_the_webui():
    out = _load_as_comfy()
    assert ("NODES ['SEGA', 'SEGAConcept', 'SEGAEdit', 'SEGAInversionSampler', 'SEGAInvert', 'SEGAMaps'] "
            "['SEGA (semantic guidance)', 'SEGA concept (conditioning)', 'SEGA edit photo', 'SEGA guidance maps', "
            "'SEGA inversion sampler', 'SEGA invert photo']") in out
    assert f"SEGA_FROM {webui.ROOT / 'sega' / '__init__.py'}" in out
    assert "WEBUI []" in out  # nothing of the WebUI side is imported


def test_a_foreign_sega_package_is_one_clear_log_line_and_no_nodes():
    prelude = "import types; sys.modules['sega'] = types.ModuleType('sega'); sys.modules['sega'].__file__ = '/elsewhere/sega/__init__.py'"
    out = _load_as_comfy(prelude)
    assert "NODES [] []" in out
    errors = [line for line in out.splitlines() if line.startswith("[SEGA]")]
    assert errors == ["[SEGA] the SEGA nodes could not be loaded (ImportError: another package named 'sega' is "
                      "already loaded (from /elsewhere/sega))"]


def test_the_node_inputs_come_from_the_settings_table():
    inputs = sega_nodes.SegaGuidanceNode.INPUT_TYPES()
    assert list(inputs["required"]) == ["model", "clip", "concepts", "scale", "threshold", "weight", "warmup",
                                        "cooldown", "momentum_scale", "momentum_beta", "mask"]
    assert inputs["required"]["threshold"][1]["max"] == 1.0 and inputs["required"]["warmup"][1]["default"] == "20%"
    assert set(inputs["optional"]) == {"negative", "concept_conditionings"}


# ---- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("concepts, message", [
    ("smile\nglasses :: colour=red", "concepts: line 2 (glasses :: colour=red): unknown key 'colour'"),
    ("smile :: threshold=7", "concepts: line 1 (smile :: threshold=7): threshold must be between 0 and 1, got 7"),
    ("-", "concepts: line 1 (-): the concept text is empty"),
    ("\n".join(f"c{i}" for i in range(200)), "concepts: line 9 (c8): too many concepts: 200 given, the limit is 8"),
    ("smile :: mask=everywhere", "concepts: line 1 (smile :: mask=everywhere): mask must be one of"),
    ("smile <lora:x:1>", "concepts[1]: <lora:x:1> is WebUI syntax"),
])
def test_a_mistake_in_the_concepts_is_a_validation_error_naming_the_input_and_line(concepts, message):
    result = sega_nodes.SegaGuidanceNode.VALIDATE_INPUTS(concepts=concepts, **DEFAULTS)
    assert isinstance(result, str) and message in result, result
    assert len(result) < 300 and "Settings" not in result  # one line, and no WebUI-only place


def test_valid_settings_and_linked_inputs_validate():
    assert sega_nodes.SegaGuidanceNode.VALIDATE_INPUTS(concepts="# a comment\nsmile\n-glasses :: scale=3 warmup=10%",
                                                       **DEFAULTS) is True
    assert sega_nodes.SegaGuidanceNode.VALIDATE_INPUTS(concepts=None) is True  # linked: checked when it runs
    assert "warmup" in sega_nodes.SegaGuidanceNode.VALIDATE_INPUTS(concepts="x", **{**DEFAULTS, "warmup": "later"})
    assert sega_nodes.SegaConceptNode.VALIDATE_INPUTS(settings="scale=7 threshold=0.9") is True
    assert "unknown key 'scael'" in sega_nodes.SegaConceptNode.VALIDATE_INPUTS(settings="scael=7")


# ---- off, on, cost --------------------------------------------------------------------------

def test_no_concepts_or_nothing_that_acts_leaves_the_model_as_it_came():
    model, clip = host.checkpoint("sd1")
    for concepts, settings in (("", {}), ("# only a comment", {}), ("smile", {"scale": 0.0}),
                               ("smile :: weight=0", {})):
        assert sega(model, clip, concepts, **settings) is model
    plain = host.txt2img(model, clip)
    assert torch.equal(host.txt2img(sega(model, clip, "smile", scale=0.0), clip), plain)


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "v"])
def test_concepts_change_the_image_deterministically_in_one_batched_call_per_step(kind):
    model, clip = host.checkpoint(kind)
    plain = host.txt2img(model, clip, batch=2)
    guided = sega(model, clip, "smiling\n-glasses :: scale=3")
    host.calls(model).clear()
    first = host.txt2img(guided, clip, batch=2)
    assert host.calls(model) == [2 * (2 + 2)] * 6  # (2 + K)·B rows, one call per step
    assert torch.equal(host.txt2img(guided, clip, batch=2), first)
    assert (first - plain).abs().max() > 1e-2
    # The patch stays on its own clone: the checkpoint samples as before.
    assert torch.equal(host.txt2img(model, clip, batch=2), plain)


def test_a_run_starts_fresh_state_and_a_model_serves_several_samplers():
    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling", momentum_scale=0.5)
    once = host.txt2img(guided, clip, seed=3)
    other = host.txt2img(guided, clip, seed=4, sampler="dpmpp_2m")
    assert torch.equal(host.txt2img(guided, clip, seed=3), once)  # no momentum carried over
    # A node downstream clones the model again (deep-copying its options): same patch, same image.
    assert torch.equal(host.txt2img(guided.clone(), clip, seed=4, sampler="dpmpp_2m"), other)
    assert not any(key.startswith(WRAPPER_KEY) for key in guided.model_options)


def test_an_interrupt_mid_run_leaves_the_next_run_clean():
    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling", momentum_scale=0.5)
    reference = host.txt2img(guided, clip)

    class Interrupted(Exception):
        pass

    def interrupt_at_step_3(executor, guider, sigmas, extra_args, callback, *rest):
        def stopping(step, *args):
            if step == 3:
                raise Interrupted  # as ComfyUI's progress bar raises on /interrupt
            return callback(step, *args)
        return executor(guider, sigmas, extra_args, stopping, *rest)

    stopped = guided.clone()
    import comfy.patcher_extension as pe
    pe.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, "interrupt", interrupt_at_step_3, stopped.model_options,
                            is_model_options=True)
    with pytest.raises(Interrupted):
        host.txt2img(stopped, clip)
    assert torch.equal(host.txt2img(guided, clip), reference)


# ---- the term --------------------------------------------------------------------------------

class Spy:
    """A CALC_COND_BATCH wrapper inside SEGA's (it sees the lists SEGA appended and their
    outputs) and a post-CFG function after SEGA's (it sees SEGA's result)."""

    def __init__(self, model):
        import comfy.patcher_extension as pe

        self.model = model.clone()
        self.calls, self.results = [], []
        pe.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "spy", self.batch, self.model.model_options,
                                is_model_options=True)
        self.model.set_model_sampler_post_cfg_function(self.post_cfg)

    def batch(self, executor, model, conds, x, timestep, options):
        out = executor(model, conds, x, timestep, options)
        if len(conds) >= 2:
            self.calls.append(dict(conds=conds, out=[o.clone() for o in out], x=x.clone(), sigma=timestep.clone()))
        return out

    def post_cfg(self, args):
        self.results.append(args["denoised"].clone())
        return args["denoised"]


@pytest.mark.parametrize("kind, sampler", [("sd1", "euler"), ("v", "heun"), ("sdxl", "dpmpp_2m"), ("flux", "euler"),
                                           ("sd3", "euler")])
def test_the_term_is_the_engines_on_the_batched_calls_outputs_in_float64(kind, sampler):
    model, clip = host.checkpoint(kind)
    text = "smiling\n-glasses :: scale=3 threshold=0.9"
    spy = Spy(sega(model, clip, text, warmup="2", momentum_scale=0.4))
    cfg = 1.0 if kind == "flux" else 6.0
    host.txt2img(spy.model, clip, sampler=sampler, cfg=cfg, steps=5)
    args = SegaArgs.from_named({"enabled": True, "concepts": text, "warmup": "2", "momentum_scale": 0.4})
    steps = {"euler": list(range(5)), "dpmpp_2m": list(range(5)), "heun": [0, 0, 1, 1, 2, 2, 3, 3, 4]}[sampler]
    assert len(spy.calls) == len(steps) == len(spy.results)
    reference = args.guidance(5)
    space = spaces.FLOW if kind in ("flux", "sd3") else spaces.DENOISED
    for call, result, step in zip(spy.calls, spy.results, steps, strict=True):
        out = [o.double() for o in call["out"]]
        x, sigma = call["x"].double(), call["sigma"].double()
        active = reference.rows_needed(step)
        if kind == "flux":  # CFG 1: SEGA's own negative rides behind the concepts
            assert len(out) == 2 + len(active) + 1 and call["conds"][1] is None
            cond, uncond, concepts = out[0], out[-1], out[2:-1]
            guided = cond
        else:
            assert len(out) == 2 + len(active)
            cond, uncond, concepts = out[0], out[1], out[2:]
            guided = uncond + cfg * (cond - uncond)
        eps_u, eps_c = spaces.noise_estimates(space, x, sigma, uncond, torch.stack(concepts) if concepts else None)
        term = reference.step(step, eps_u, eps_c)
        expected = spaces.add_term(space, guided, term, sigma)
        assert torch.allclose(result.double(), expected, atol=2e-5, rtol=1e-4), (step, (result.double() - expected).abs().max())


def test_warmup_counts_the_samplers_steps_for_a_second_order_sampler():
    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling", warmup="3", momentum_scale=0.0)
    host.calls(model).clear()
    host.txt2img(guided, clip, sampler="heun", steps=6)
    # Heun: two calls a step, one in the last; the concept joins from step 3 on.
    assert host.calls(model) == [2] * 6 + [3] * 5


# ---- CFG 1, Flux, BasicGuider --------------------------------------------------------------------

def test_flux_at_cfg_1_sega_evaluates_the_negative_with_the_positives_guidance():
    model, clip = host.checkpoint("flux")
    positive = host.flux_positive(clip, "a cat", guidance=2.0)
    spy = Spy(sega(model, clip, "smiling"))
    with torch.no_grad():
        import nodes

        nodes.KSampler().sample(spy.model, 1, 4, 1.0, "euler", "normal", positive, host.encode(clip, ""),
                                host.latent(), 1.0)
    for call in spy.calls:
        negative = call["conds"][-1][0]
        assert call["conds"][1] is None  # ComfyUI's own call stays the positive's alone
        assert float(negative["model_conds"]["guidance"].cond) == 2.0
        assert float(call["conds"][2][0]["model_conds"]["guidance"].cond) == 2.0  # the concept's too
    plain = host.txt2img(model, clip, cfg=1.0)
    assert (host.txt2img(sega(model, clip, "smiling"), clip, cfg=1.0) - plain).abs().max() > 1e-3


def test_basic_guider_has_no_negative_and_sega_steers_against_the_nodes_own():
    from comfy_extras.nodes_custom_sampler import Guider_Basic

    model, clip = host.checkpoint("flux")
    positive = host.flux_positive(clip, "a cat", guidance=3.0)

    def run(m):
        guider = Guider_Basic(m)
        guider.set_conds(positive)
        return host.custom(guider, steps=4)

    plain = run(model)
    own_negative = run(sega(model, clip, "smiling", negative=host.encode(clip, "blurry")))
    empty_negative = run(sega(model, clip, "smiling"))
    assert (own_negative - plain).abs().max() > 1e-3 and (empty_negative - own_negative).abs().max() > 1e-4
    assert torch.equal(run(sega(model, clip, "smiling")), empty_negative)


def test_concepts_given_as_conditioning_act_as_the_same_text_would():
    model, clip = host.checkpoint("sd1")
    chained = sega_nodes.SegaConceptNode().add(host.encode(clip, "smiling"), "away", "scale=3")[0]
    as_text = host.txt2img(sega(model, clip, "-smiling :: scale=3"), clip)
    as_conditioning = host.txt2img(sega(model, clip, "", extra=chained), clip)
    assert torch.equal(as_conditioning, as_text)


# ---- beside other patches ------------------------------------------------------------------------

def test_another_pack_replacing_the_batched_call_leaves_the_hosts_image_and_says_why(caplog):
    model, clip = host.checkpoint("sd1")

    def own_batch(args):  # as SkipLayerGuidanceDiTSimple: the step's lists go in calls of their own
        import comfy.samplers

        cond, uncond = args["conds"]
        x, sigma, m, opts = args["input"], args["sigma"], args["model"], args["model_options"]
        return [comfy.samplers.calc_cond_batch(m, [cond], x, sigma, opts)[0],
                comfy.samplers.calc_cond_batch(m, [uncond], x, sigma, opts)[0]]

    other = model.clone()
    other.set_model_sampler_calc_cond_batch_function(own_batch)
    plain = host.txt2img(other, clip)
    with caplog.at_level(logging.WARNING, logger="sd-webui-sega"):
        beside = host.txt2img(sega(other, clip, "smiling"), clip)
    assert torch.equal(beside, plain)
    assert any("SEGA did not act in this run" in r.getMessage() for r in caplog.records)


def test_a_patch_deep_copied_by_a_later_clone_stays_the_same_object():
    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling")
    copied = copy.deepcopy(guided.model_options)
    assert copied["sampler_post_cfg_function"][-1].__self__ is guided.model_options["sampler_post_cfg_function"][-1].__self__


# ---- implicit masks --------------------------------------------------------------------------

def masks_seen(monkeypatch) -> list:
    """The attention maps the engine gets at each step (None where it needs none)."""
    from sega.guidance import SegaGuidance

    maps = []
    real_step = SegaGuidance.step

    def spy_step(self, step, eps_u, eps_c, region=None, attention=None, early=None):
        maps.append(attention)
        return real_step(self, step, eps_u, eps_c, region, attention, early)

    monkeypatch.setattr(SegaGuidance, "step", spy_step)
    return maps


def test_the_masks_read_the_concepts_rows_of_the_batched_call_as_a_call_of_their_own(monkeypatch):
    """The attn2 patch finds the concept rows by their list in ComfyUI's batched call; the
    maps equal the forward-hook reading of a call of the concept rows alone."""
    from sega.attention import ConceptAttention
    from sega.masks import attention_grid

    model, clip = host.checkpoint("quarter")
    maps = masks_seen(monkeypatch)
    spy = Spy(sega(model, clip, "smiling\ncurly hair :: mask=threshold", mask="attention", warmup="1"))
    host.txt2img(spy.model, clip, batch=2, size=64, steps=4)
    assert len(maps) == 4 and all(m is not None for m in maps)  # momentum reads the concepts in warm-up too
    smiling = host.clip_columns(clip, "smiling")
    for call, seen in zip(spy.calls, maps, strict=True):
        concepts = [lists[0]["model_conds"]["c_crossattn"].cond for lists in call["conds"][2:]]
        x, sigma = call["x"], call["sigma"]
        grid = attention_grid(*x.shape[-2:])
        rows = torch.zeros((4, concepts[0].shape[1]))
        rows[:2, smiling] = 1.0
        reference = ConceptAttention(model.model.diffusion_model)
        reference.arm(0, 4, grid, rows)
        try:
            with torch.no_grad():
                model.model.apply_model(x.repeat(2, 1, 1, 1), sigma.repeat(2),
                                        c_crossattn=torch.cat([c.expand(2, -1, -1) for c in concepts]))
            expected = reference.collect(grid)
        finally:
            reference.remove()
        assert seen.shape == (2, 2, *grid)
        assert torch.allclose(seen[0], expected[:2], atol=1e-6)  # the masked concept's rows


def test_masks_on_a_model_without_cross_attention_are_off_with_the_reason(caplog):
    model, clip = host.checkpoint("flux")
    plain = host.txt2img(model, clip, cfg=1.0)
    with caplog.at_level(logging.WARNING, logger="sd-webui-sega"):
        masked = host.txt2img(sega(model, clip, "smiling", mask="intersect"), clip, cfg=1.0)
    assert torch.equal(masked, plain)
    assert any("implicit masks need the model's cross-attention layers" in r.getMessage() for r in caplog.records)


def test_a_concept_given_as_conditioning_cannot_take_a_mask():
    model, clip = host.checkpoint("sd1")
    assert "no words whose attention" in sega_nodes.SegaConceptNode.VALIDATE_INPUTS(settings="mask=attention")
    chained = sega_nodes.SegaConceptNode().add(host.encode(clip, "smiling"), "toward", "")[0]
    with pytest.raises(sega_nodes.SegaInputError, match=r"concepts\[2\]: a concept given as conditioning"):
        sega(model, clip, "glasses", extra=chained, mask="attention")


# ---- guidance maps ---------------------------------------------------------------------------------

def test_the_maps_node_draws_where_each_concept_acted_for_the_run_that_made_the_samples():
    from sega_comfy.maps import SegaMapsNode, patch_of

    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling\n-glasses :: cooldown=1", warmup="0")
    first = host.txt2img(guided, clip, batch=2, seed=1)
    second = host.txt2img(guided, clip, batch=2, seed=2)
    images = torch.rand(2, 64, 64, 3)
    pictures = SegaMapsNode().draw(guided, {"samples": first}, images)[0]
    assert pictures.shape[0] == 2 * 3 and pictures.shape[-1] == 3  # per image: 2 concepts + all together
    assert 0.0 <= float(pictures.min()) and float(pictures.max()) <= 1.0
    maps_first, _ = patch_of(guided).maps_for(first)
    maps_second, _ = patch_of(guided).maps_for(second)
    assert maps_first.shape == (2, 2, 8, 8) and not torch.equal(maps_first, maps_second)
    # "glasses" cools down after step 0 of 6: it acted far less than "smiling".
    assert float(maps_first[1].sum()) < 0.5 * float(maps_first[0].sum())
    with pytest.raises(ValueError, match="no sampling run of this SEGA model made these samples"):
        SegaMapsNode().draw(guided, {"samples": host.txt2img(model, clip, batch=2)}, images)
    with pytest.raises(ValueError, match="has no SEGA node before it"):
        SegaMapsNode().draw(model, {"samples": first}, images)


# ---- example workflows ----------------------------------------------------------------------------

def test_the_example_workflows_use_the_nodes_as_they_are():
    """ComfyUI's template browser lists example_workflows/*.json (UI format): every SEGA node's
    widget values fill its widget inputs in order and validate, every link joins an output
    to an input of the same type."""
    import json

    workflows = sorted((webui.ROOT / "example_workflows").glob("*.json"))
    assert {p.name for p in workflows} >= {"sega_sd15_txt2img.json", "sega_sdxl_txt2img.json", "sega_flux_txt2img.json",
                                           "sega_sd15_photo_edit.json"}
    widget_types = ("FLOAT", "INT", "STRING", "BOOLEAN")
    for path in workflows:
        graph = json.loads(path.read_text())
        by_id = {n["id"]: n for n in graph["nodes"]}
        boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1], n["id"])
                 for n in graph["nodes"]]
        overlapping = [(a[4], b[4]) for a in boxes for b in boxes
                       if a[4] < b[4] and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]]
        assert not overlapping, (path.name, overlapping)
        for link_id, src, src_slot, dst, dst_slot, kind in graph["links"]:
            assert by_id[src]["outputs"][src_slot]["type"] == kind == by_id[dst]["inputs"][dst_slot]["type"], path
            assert link_id in by_id[src]["outputs"][src_slot]["links"] and by_id[dst]["inputs"][dst_slot]["link"] == link_id
        for node in graph["nodes"]:
            cls = sega_nodes.NODE_CLASS_MAPPINGS.get(node["type"])
            if cls is None:
                continue
            required = cls.INPUT_TYPES()["required"]
            widgets = [name for name, spec in required.items()
                       if isinstance(spec[0], list) or spec[0] in widget_types]
            # The page puts a seed's "control after generate" value right after it.
            controls = {name for name, spec in required.items()
                        if len(spec) > 1 and spec[1].get("control_after_generate")}
            shown = [w for name in widgets for w in ((name, f"{name}:control") if name in controls else (name,))]
            assert len(node["widgets_values"]) == len(shown), (path.name, node["type"])
            values = {k: v for k, v in zip(shown, node["widgets_values"], strict=True) if not k.endswith(":control")}
            choices = {name for name, spec in required.items() if isinstance(spec[0], list)}
            for name in choices:
                assert values[name] in required[name][0], (path.name, name, values[name])
            checked = {k: v for k, v in values.items() if k not in choices}
            if hasattr(cls, "VALIDATE_INPUTS"):
                names = cls.VALIDATE_INPUTS.__code__.co_varnames[1: cls.VALIDATE_INPUTS.__code__.co_argcount]
                checked = {k: v for k, v in checked.items() if k in names}
                assert cls.VALIDATE_INPUTS(**checked) is True, (path.name, cls.VALIDATE_INPUTS(**checked))
            inputs = {i["name"] for i in node["inputs"]}
            assert inputs == set(cls.INPUT_TYPES()["required"]) - set(widgets) | set(cls.INPUT_TYPES().get("optional", {}))


@pytest.mark.parametrize("kind, cfg", [("flux-bfl", 1.0), ("sd3", 5.0)])
def test_dit_masks_read_the_joint_attention_of_the_concepts_rows_in_the_batched_call(monkeypatch, kind, cfg):
    """Transformers in Black Forest Labs' layout (ComfyUI's Flux, at CFG 1 with SEGA's own
    negative in the call) and SD3's MMDiT: the concept rows' image → word attention read from
    ComfyUI's batched call equals the same reading of a call of the concept rows alone."""
    from sega.joint_attention import JointAttention, patch_grid

    model, clip = host.checkpoint(kind)
    maps = masks_seen(monkeypatch)
    spy = Spy(sega(model, clip, "smiling", mask="attention", warmup="0", momentum_scale=0.0))
    plain = host.txt2img(model, clip, cfg=cfg, steps=3, size=32)
    guided = host.txt2img(spy.model, clip, cfg=cfg, steps=3, size=32)
    assert (guided - plain).abs().max() > 1e-4
    smiling = host.clip_columns(clip, "smiling")
    for call, seen in zip(spy.calls, maps, strict=True):
        concept = call["conds"][2][0]["model_conds"]
        if cfg == 1.0:
            assert len(call["conds"]) == 4 and call["conds"][1] is None  # [positive, None, concept, SEGA's negative]
        x, sigma = call["x"], call["sigma"]
        grid = patch_grid(*x.shape[-2:])
        rows = torch.zeros((1, concept["c_crossattn"].cond.shape[1]))
        rows[0, smiling] = 1.0
        reference = JointAttention(model.model.diffusion_model)
        reference.arm(0, 1, grid, rows)
        extra = {k: v.cond for k, v in concept.items() if k != "c_crossattn"}
        with torch.no_grad():
            model.model.apply_model(x, sigma, c_crossattn=concept["c_crossattn"].cond, **extra)
        expected = reference.collect(grid)
        assert seen.shape == (1, 1, *grid)
        assert torch.allclose(seen[0], expected, atol=1e-6)


def test_a_guider_without_a_positive_leaves_sega_off_with_the_reason(caplog):
    import comfy.samplers

    model, clip = host.checkpoint("sd1")

    class NegativeOnly(comfy.samplers.CFGGuider):  # a guider whose conds SEGA cannot steer from
        def set_conds(self, negative):
            self.inner_set_conds({"negative": negative})

    def run(m):
        guider = NegativeOnly(m)
        guider.set_conds(host.encode(clip, "blurry"))
        guider.set_cfg(3.0)
        return host.custom(guider, steps=3)

    plain = run(model)
    with caplog.at_level(logging.WARNING, logger="sd-webui-sega"):
        assert torch.equal(run(sega(model, clip, "smiling", mask="attention")), plain)
    assert any("no positive conditioning" in r.getMessage() for r in caplog.records)


# ---- cancel, cached encodings ------------------------------------------------------------------------

def test_a_cancel_inside_the_batched_call_stops_the_run_instead_of_sega(caplog):
    """ComfyUI checks /interrupt inside every model op and raises from the model call; SEGA's
    wrapper must let it through (before, it turned SEGA off and the run went on)."""
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    model, clip = host.checkpoint("sd1")
    guided = sega(model, clip, "smiling").clone()
    calls = []

    def interrupting(executor, *args, **kwargs):  # as comfy/ops.py's run_every_op
        calls.append(1)
        if len(calls) == 3:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()
        return executor(*args, **kwargs)

    pe.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "ops", interrupting, guided.model_options,
                            is_model_options=True)
    with caplog.at_level(logging.WARNING, logger="sd-webui-sega"), pytest.raises(mm.InterruptProcessingException):
        host.txt2img(guided, clip)
    assert len(calls) == 3
    assert not [r for r in caplog.records if "SEGA is off" in r.getMessage()]


def test_a_concepts_encoding_is_kept_on_its_clip():
    model, clip = host.checkpoint("sd1")
    vars(clip).pop("_sega_encoded", None)
    clip.encoded.clear()
    sega(model, clip, "dimples\n-freckles :: scale=3", scale=4.0)
    encoded = len(clip.encoded)
    sega(model, clip, "dimples\n-freckles :: scale=3", scale=6.0, mask="attention")
    assert len(clip.encoded) == encoded == 3  # the two concepts and the empty negative, once


def test_another_patchs_own_model_call_in_a_post_cfg_function_is_left_alone():
    """PAG and SAG make a call of their own from a post-CFG function with one cond list:
    SEGA adds nothing to it, and its own term is the same as without that patch's call."""
    import comfy.samplers

    model, clip = host.checkpoint("sd1")
    seen = []

    def pag_like(args):
        out = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                             args["model_options"])
        seen.append(len(out))
        return args["denoised"]  # it only looks: the image must be SEGA's alone

    guided = sega(model, clip, "smiling")
    beside = guided.clone()
    beside.set_model_sampler_post_cfg_function(pag_like)
    host.calls(model).clear()
    result = host.txt2img(beside, clip, steps=4)
    assert seen == [1] * 4
    assert host.calls(model) == [3, 1] * 4  # SEGA's (2 + 1)·B call, then the patch's own B rows
    assert torch.equal(result, host.txt2img(guided, clip, steps=4))

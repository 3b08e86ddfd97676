"""opts, state and the loaded model, as the WebUI's modules.shared holds them."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kw):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section


class Options:
    defaults = {
        "skip_early_cond": 0.0,
        "s_min_uncond_all": False,
        "pad_cond_uncond": False,
        "pad_cond_uncond_v0": False,
        "batch_cond_uncond": True,
        "img2img_fix_steps": False,
        "use_old_scheduling": False,
        "eta_ancestral": 1.0,
        "s_noise": 1.0,
        "no_dpmpp_sde_batch_determinism": False,
        "return_grid": True,
        "samples_save": True,
        "samples_format": "png",
        "sd_model_checkpoint": None,
        "sd_checkpoints_limit": 1,
        "refiner_switch_by_sample_steps": False,
        "hires_fix_refiner_pass": "second pass",
        "sd3_enable_t5": False,
    }

    def __init__(self):
        self.data = dict(self.defaults)

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        if name == "data":
            super().__setattr__(name, value)
        else:
            self.data[name] = value

    def reset(self):
        self.data = dict(self.defaults)

    def add_option(self, key, info):
        type(self).defaults[key] = info.default
        self.data.setdefault(key, info.default)
        self.data_labels[key] = info

    data_labels = {}


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = False
        self.skipped = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True


opts = Options()
state = State()
sd_model = None
device = "cpu"

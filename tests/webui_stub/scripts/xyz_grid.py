"""scripts/xyz_grid.py: the axis classes, the module-level axis list, and a script whose
ui() takes the axes of its tab from that list — what the plot (and the API's index into
"X type") uses afterwards."""

from modules import scripts


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost, self.choices, self.prepare = format_value, confirm, cost, choices, prepare


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


def _field(name):
    def apply(p, x, xs):
        setattr(p, name, x)

    return apply


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Seed", int, _field("seed")),
    AxisOptionTxt2Img("Hires steps", int, _field("hr_second_pass_steps")),
    AxisOptionImg2Img("Image CFG Scale", float, _field("image_cfg_scale")),
]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) is AxisOption or x.is_img2img == is_img2img]
        return []

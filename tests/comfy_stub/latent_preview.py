"""latent_preview.py `prepare_callback(model, steps)`: the sampler nodes' step callback. In
ComfyUI it updates the progress bar, which raises InterruptProcessingException once
/interrupt was asked for; here it checks the same flag. `STEPS` (stand-in only) logs each
reported step."""

from comfy import model_management

STEPS: list[int] = []


def prepare_callback(model, steps, x0_output_dict=None):
    def callback(step, x0, x, total_steps):
        STEPS.append(step)
        model_management.throw_exception_if_processing_interrupted()

    return callback

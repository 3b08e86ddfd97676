"""modules/images.py: `save_image` with WebUI 1.10.1's signature, recording its calls
instead of writing files, and `get_font`."""

from PIL import ImageFont

saved = []  # (image, path, basename, seed, prompt, extension, keyword arguments)


def get_font(fontsize):
    try:
        return ImageFont.load_default(size=fontsize)
    except TypeError:
        return ImageFont.load_default()


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    saved.append((image, path, basename, seed, prompt, extension,
                  dict(info=info, pnginfo_section_name=pnginfo_section_name, p=p, suffix=suffix)))
    return f"{path}/{len(saved):05}{suffix}.{extension}", None

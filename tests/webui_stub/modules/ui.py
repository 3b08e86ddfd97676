"""modules/ui.py `create_ui`: registers the settings (UiSettings.register_settings runs the
ui_settings callbacks) first, then builds both tabs, calling every script's ui() — the X/Y/Z
script takes its axis list there."""

import gradio as gr

from modules import script_callbacks, scripts


def create_ui():
    script_callbacks.ui_settings_callback()
    with gr.Blocks() as demo:
        for runner, is_img2img in ((scripts.scripts_txt2img, False), (scripts.scripts_img2img, True)):
            runner.initialize_scripts(is_img2img)
            runner.setup_ui()
    return demo

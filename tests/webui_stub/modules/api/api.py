"""modules/api/api.py `Api.__init__`: a WebUI started without its UI (--nowebui) has empty
script runners here, so the API builds the UI itself to get the scripts and their args."""

from modules import scripts, ui


class Api:
    def __init__(self, app):
        self.app = app
        if not scripts.scripts_txt2img.scripts or not scripts.scripts_img2img.scripts:
            ui.create_ui()
        if not scripts.scripts_txt2img.scripts:
            scripts.scripts_txt2img.initialize_scripts(False)
        if not scripts.scripts_img2img.scripts:
            scripts.scripts_img2img.initialize_scripts(True)

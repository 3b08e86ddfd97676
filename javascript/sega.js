// Tooltips for the SEGA accordion. Their text comes from the server (the settings table in
// sega/fields.py), in a JSON block the accordion carries, so there is one source for it.
(function () {
    function applyTooltips() {
        const app = gradioApp();
        app.querySelectorAll("script.sega-tooltips").forEach(function (block) {
            const tab = block.dataset.tab;
            let tips;
            try {
                tips = JSON.parse(block.textContent);
            } catch (e) {
                return;
            }
            Object.keys(tips).forEach(function (name) {
                const el = app.querySelector("#sega_" + tab + "_" + name);
                if (!el) return;
                el.title = tips[name];
                el.querySelectorAll("label, span, input, textarea").forEach(function (child) {
                    child.title = tips[name];
                });
            });
        });
    }

    onUiLoaded(applyTooltips);
})();

"""comfy_extras/nodes_flux.py `FluxGuidance`: the conditioning's dicts get `guidance`
(node_helpers.conditioning_set_values: copies, the tensors shared)."""


class FluxGuidance:
    FUNCTION = "append"

    def append(self, conditioning, guidance):
        return ([[t, {**d, "guidance": guidance}] for t, d in conditioning],)

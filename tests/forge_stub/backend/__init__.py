"""Stand-in for Forge's `backend` package (lllyasviel/stable-diffusion-webui-forge @ dfdcbab6)."""

"""Forge's `modules_forge` package: here only its presence (host detection, contract §7)."""

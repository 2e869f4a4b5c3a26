"""Marker for the Matcha-TTS third-party folder: upstream imports `matcha` at load."""

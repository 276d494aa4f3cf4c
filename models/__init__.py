"""pcv.models: the bundled default model (package data)."""

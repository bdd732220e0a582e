"""Defenses: plain SAE feature clamping and residual-aware defenses, as TransformerLens hooks."""

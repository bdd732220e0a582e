"""Refusal steering on the subject: refusal latents clamped so that it refuses, and recovery.

``discovery``: refusal latents and the calibrated multi-site clamp. ``recovery``: attacks
with the optimised delta applied while generating, judged like the defended outputs.
``pipeline``: the whole reproduction as data. ``cli``: ``python -m experiments.reproduce refusal``.
"""

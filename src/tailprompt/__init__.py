"""tailprompt: prompt tuning of CLIP-style models on long-tailed few-shot data."""

__version__ = "0.1.0"

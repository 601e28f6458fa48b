"""xlsteer: steer multilingual language models toward an anchor language, and measure it honestly."""

__version__ = "0.1.0"

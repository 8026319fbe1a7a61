"""cmpo: steerable alignment with Conditional Multiobjective Preference Optimization."""

__version__ = "0.1.0"

"""Shared fixtures. Tests read as examples: fixture patients are small literal tables."""

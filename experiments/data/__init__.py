"""Prompt sets: harmful behaviours (read from data packages), our own harmless set, IOI, recall."""

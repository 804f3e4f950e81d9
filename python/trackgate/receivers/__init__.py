"""Receivers: one module per protocol."""

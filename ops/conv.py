"""Placeholder: filled by its family author."""

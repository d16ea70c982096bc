"""The decoder graph, composed from small components that read like the maths (see decoder.py)."""

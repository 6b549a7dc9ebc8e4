"""Bridges to other evaluation tools; each imports its tool lazily and names the extra that installs it."""

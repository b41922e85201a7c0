"""The package version, in a module of its own: everything may import it without importing anything else."""

__version__ = "0.1.0"

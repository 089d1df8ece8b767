"""hmrec: precomputed top-K fashion recommendations as Spark batch jobs."""

__version__ = "0.1.0"

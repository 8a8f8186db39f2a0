"""fedrec: a recommender trained across sovereign silos with Flower, without moving data."""

__version__ = "0.1.0"

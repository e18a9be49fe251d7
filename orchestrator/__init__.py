"""Declarative recipes turned into real distributed training runs."""

__version__ = "0.1.0"

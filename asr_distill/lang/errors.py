"""The lang package's one error type."""

__all__ = ["LexiconError"]


class LexiconError(ValueError):
    """Bad lexicon or transcript words; the message names the file / word / utterance."""

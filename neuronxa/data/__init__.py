"""Data: parallel corpora and their readers, language codes, downstream results per language."""

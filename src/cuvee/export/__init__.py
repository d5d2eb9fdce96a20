"""Exports of stored models to the formats other runtimes read (see formats.FORMATS)."""

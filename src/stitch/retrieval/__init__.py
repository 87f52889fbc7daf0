"""Retrieval: scoring a gallery as a run does (``Scorer``), ranks and metrics under named protocols, graded
submissions, indexes and search."""

"""Applications built on the library: the ``stitch`` command, benchmarks and learning curves, tuning,
reports, exports, the search service and the metric-learning lab.

They import the library (``stitch.data``, ``stitch.translators``, ``stitch.training``, ``stitch.retrieval``,
...) and :mod:`stitch.api`; nothing in the library imports them.
"""

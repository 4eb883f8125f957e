"""The corpus wing: real text from pinned Debian packages, for the local suite and the training data.

A program of its own, above the library: it reads ``.deb`` files and writes data in the formats
:mod:`embeddinggemma.eval.data` and :mod:`embeddinggemma.train.data` define, and nothing in the model,
engine, evaluation or training code imports it (``scripts/`` do). Layout (dependency order):

* ``debian``: exact ``.deb`` files (version + sha256) fetched with apt and read without unpacking.
* ``extract_code``, ``extract_man``, ``extract_gettext``, ``pydoc``: Python functions, man pages,
  gettext catalogues and Python's reStructuredText documentation to plain text.
* ``suite_sources``: the suite's package pins and the partition rule that keeps training data out of it.
* ``local_suite``: builds the offline evaluation suite (``scripts/build_local_suite.py``).
* ``training_sources``: training candidates from the same and more packages; ``disjoint``: the proof
  that they never touch the suite (``scripts/build_training_data.py``).
"""

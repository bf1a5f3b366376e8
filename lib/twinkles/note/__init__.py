"""The DESC Note and the run browser, built from a run's executed notebooks.

* :mod:`~twinkles.note.notebooks`: labelled figures of executed notebooks, and notebooks
  rendered to HTML (nbconvert);
* :mod:`~twinkles.note.sphinx_ext`: the Sphinx extension that puts those figures and the
  run's numbers (``twinkles report``, ``metrics.json``) into the Note's MyST source;
* :mod:`~twinkles.note.build`: ``twinkles note``: the Note to HTML (Sphinx + MyST) and PDF
  (headless Chromium, when installed);
* :mod:`~twinkles.note.browser`: ``runs/<name>/index.html``, the run browser.
"""

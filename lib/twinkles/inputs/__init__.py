"""A run's inputs: the simulated sky or images and catalogs brought from any simulator.

* :mod:`~twinkles.inputs.source`: which of the two a run has, made or ingested once, and the
  guard of the user's files.
* :mod:`~twinkles.inputs.simulate`: rendering the visits of a simulated run
  (:mod:`twinkles.sim`) into its repository.
* :mod:`~twinkles.inputs.eimages`, :mod:`~twinkles.inputs.refcat`,
  :mod:`~twinkles.inputs.truth`, :mod:`~twinkles.inputs.tables`: reading and checking
  external eimages, reference catalogs and truth tables.
"""

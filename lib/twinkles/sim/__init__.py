"""The simulated sky: the OpSim + CatSim + PhoSim stand-in.

* :mod:`~twinkles.sim.cadence`: OpSim-like visit table.
* :mod:`~twinkles.sim.stars`, :mod:`~twinkles.sim.galaxies`, :mod:`~twinkles.sim.supernovae`,
  :mod:`~twinkles.sim.lensing`: truth populations; :mod:`~twinkles.sim.truth`: the truth API.
* :mod:`~twinkles.sim.refcat`: the reference catalog.
* :mod:`~twinkles.sim.sky`: all of the above for a run, written once into its repository.
* :mod:`~twinkles.sim.render`: drawing one visit into an eimage with GalSim.

Rendering the visits of a run into its repository is one of a run's inputs
(:mod:`twinkles.inputs.simulate`).
"""

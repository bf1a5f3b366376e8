"""A run's inputs: the simulated sky or images and catalogs brought from any simulator."""

"""Instrument-signature removal for eimages: reading, variance, saturation, cosmic rays."""

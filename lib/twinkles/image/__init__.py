"""Images: the :class:`~twinkles.image.exposure.Exposure` and its mask planes."""

from twinkles.image.exposure import BAD_PLANES, Exposure, MaskPlane, PhotoCalib

__all__ = ["BAD_PLANES", "Exposure", "MaskPlane", "PhotoCalib"]

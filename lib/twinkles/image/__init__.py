"""Images: the :class:`~twinkles.image.exposure.Exposure` and its mask planes."""

from twinkles.image.exposure import Exposure, MaskPlane, PhotoCalib

__all__ = ["Exposure", "MaskPlane", "PhotoCalib"]

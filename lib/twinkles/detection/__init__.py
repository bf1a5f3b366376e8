"""Sky background, source detection and deblending."""

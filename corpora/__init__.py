"""Corpora: image listings in the COCO 2017 layout (sample, signs, COCO, registered folders) and image decoding."""

"""Screening: stream an image archive through segmentation, classification and explanation on Ray Data."""

"""The competition folder (Kaggle's layout), read and checked: ids, labels, decoded images.

``competition`` is this package's face; ``images`` (the image store a run reads, its input size), ``cache`` (the
decoded-image cache), ``validate`` (``make validate``) and ``demo`` (the demo competitions) are imported by
name, so reading a competition loads neither OpenCV nor torch.
"""

from pipeline.data.competition import (TOO_MANY_PIXELS, Competition, DataError, ImageStore, check_images, decode_image,
                                       image_to_rgb, load_competition, median_short_side, to_rgb_uint8)

__all__ = ["DataError", "Competition", "TOO_MANY_PIXELS", "check_images", "load_competition", "median_short_side",
           "to_rgb_uint8", "image_to_rgb", "decode_image", "ImageStore"]

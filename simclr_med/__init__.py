"""simclr-med: SimCLR and MICLe self-supervised pretraining for medical images.

Implements Azizi et al., "Big Self-Supervised Models Advance Medical Image Classification"
(ICCV 2021) with TensorFlow 2 and Keras 3.
"""

__version__ = "0.1.0"

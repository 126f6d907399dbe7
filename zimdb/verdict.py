"""The verdict on P(positive), the same for every model: its class names and threshold."""

import numpy as np

CLASSES = np.array(["negative", "positive"])  # label 0, label 1
THRESHOLD = 0.5  # P(positive) above it is a positive verdict


def labels(probability: np.ndarray) -> np.ndarray:
    """The class names of P(positive), as the test metrics count them."""
    return CLASSES[(np.asarray(probability) > THRESHOLD).astype(int)]

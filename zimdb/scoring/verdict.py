"""The verdict on P(positive), the same for every model: its class names and threshold."""

import numpy as np

CLASSES = np.array(["negative", "positive"])  # label 0, label 1
THRESHOLD = 0.5  # P(positive) above it is a positive verdict


def predicted(probability: np.ndarray) -> np.ndarray:
    """The verdict of each P(positive) as a label: 1 positive, 0 negative."""
    return (np.asarray(probability) > THRESHOLD).astype(int)


def labels(probability: np.ndarray) -> np.ndarray:
    """The class names of P(positive), as the test metrics count them."""
    return CLASSES[predicted(probability)]

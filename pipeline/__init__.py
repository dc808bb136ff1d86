"""TensorBoard-instrumented training pipeline for MNIST-family classifiers.

Kept free of TensorFlow imports: importing TensorFlow costs seconds.
"""

__version__ = "0.1.0"

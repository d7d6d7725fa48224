"""jetcap: take a trained PyTorch model to a Jetson device and keep it honest on the way."""

__version__ = "0.1.0"

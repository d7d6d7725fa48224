"""Small torch-free helpers shared by every part of jetcap (Python 3.6 compatible)."""

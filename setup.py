"""Shim so that old pip/setuptools (Ubuntu 18.04, JetPack 4.6) can install jetcap; metadata is in setup.cfg."""
from setuptools import setup

setup()

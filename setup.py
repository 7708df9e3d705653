# All metadata lives in setup.cfg; this file only lets `pip install -e .` work with old pips.
from setuptools import setup

setup()

"""The application, in layers; each package may import only the layers above it in this list:

core -> models -> generation -> app -> frontends.  ``tests/test_architecture.py`` checks it.
"""

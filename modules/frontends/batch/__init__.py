"""batch: a folder of images through the Service. ``plan`` pairs files, ``runner`` runs and writes them,
``cli`` is ``python launch.py batch``.  May import: modules.app, modules.core.
"""

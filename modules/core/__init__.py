"""core: the plain data every layer shares: requests and results, settings, errors, atomic files,
infotext, prompt parsing, image and depth-map files, the sampler table, progress and the hook surface.

May import: the standard library, numpy, PIL, OpenCV (no torch, no other layer).
"""

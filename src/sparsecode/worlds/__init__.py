"""Worlds with known variables: an Othello game model whose board state is ground truth.

(Natural-image patches, the other such world, are a source: ``sources/images.py``.)
"""

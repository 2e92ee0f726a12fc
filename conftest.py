"""Puts the project root on sys.path so that ``tests`` and ``mailmcp`` import from the checkout."""

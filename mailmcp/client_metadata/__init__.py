"""
Pinned Client ID Metadata Documents (package data): Claude's hosted
documents answer data-centre fetches with a bot challenge, so these copies
are used instead of fetching (``--client-metadata-dir`` overrides them).
"""

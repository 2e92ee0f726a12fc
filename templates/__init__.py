"""Page templates, shipped as the package ``mailmcp.templates``."""

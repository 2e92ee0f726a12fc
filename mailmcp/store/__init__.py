"""
The grant stores behind `mailmcp.interfaces.IGrantStore`: SQLite in the
state directory (one process) and Redis (several processes or hosts).  The
in-memory store for tests is in `mailmcp.testing`.
"""

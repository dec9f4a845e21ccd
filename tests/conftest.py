"""Shared test configuration for the plugin's own tests."""

pytest_plugins = ["pytester"]

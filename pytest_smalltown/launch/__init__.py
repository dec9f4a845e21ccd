"""Launching QEMU VMs: argv construction, port maps, process supervision.

The modules here know nothing about pytest: the plugin and the ``smalltown``
CLI both use them.
"""

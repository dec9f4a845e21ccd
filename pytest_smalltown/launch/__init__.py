"""Launching QEMU VMs: argv construction, port maps, VM and swtpm processes, saved VM state.

The modules here know nothing about pytest: the plugin and the ``smalltown``
CLI both use them.
"""

"""Broker feeds: wire protocols (sans-I/O), instrument masters, clients and the simulator.

Dependency rule: ``feeds`` never imports ``service``.
"""

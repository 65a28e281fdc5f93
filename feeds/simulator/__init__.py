"""A synthetic Indian index-options market served over Dhan's v2 feed protocol.

``universe`` builds deterministic contracts, ``scrip_master`` renders them as Dhan's CSV,
``market`` moves prices (seeded) and renders Dhan packets, and ``server`` is a real WebSocket
server that speaks the protocol byte for byte, so the Dhan client runs against it unchanged.
"""

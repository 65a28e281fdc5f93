"""Zerodha Kite Connect v3 ticker: binary packets (sans-I/O codec), JSON requests, instruments CSV, client."""

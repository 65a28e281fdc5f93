"""DhanHQ v2: binary feed packets (sans-I/O codec), JSON requests, scrip master, client."""

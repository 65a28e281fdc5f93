"""Redis: the layout, the mirror that writes it, and the read replica that serves from it."""

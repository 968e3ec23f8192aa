"""minilib: the small library behind the course."""

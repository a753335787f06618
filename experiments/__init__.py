"""One script per experiment of the two papers; each writes a PNG and a JSON of its numbers."""

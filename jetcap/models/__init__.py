"""Model families (captioner, sequence classifier) and safe checkpoint loading."""

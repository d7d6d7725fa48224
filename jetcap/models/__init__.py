"""Model families (captioner, sequence classifier) and safe checkpoint loading."""
from jetcap.models.checkpoint import LoadedModel, load_checkpoint
from jetcap.models.registry import families, get_family

__all__ = ["LoadedModel", "families", "get_family", "load_checkpoint"]

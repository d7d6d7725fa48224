"""Captioner adapters: how one decoder step of the user's model is wired (see ``base``)."""

"""One module per ``jetcap`` command; each defines ``command``, a click.Command.

Modules here import only click and torch-free jetcap modules at import time; heavy work is imported
inside the command function.
"""

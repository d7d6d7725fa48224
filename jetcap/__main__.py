"""``python -m jetcap`` runs the command line."""
from jetcap.cli import main

main()

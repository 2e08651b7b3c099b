"""The ``histo-bench`` commands (the top layer): ``app`` registers the commands of the modules beside it."""

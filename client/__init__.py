"""Python client of the Fun-ASR GPU scheduling service: library (`client.library`) and CLI."""

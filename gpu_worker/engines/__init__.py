"""Worker engines: how a loaded model serves requests (batched utterances, sessions).

`base` holds the engine interface, the plain types and the registry of engine names."""

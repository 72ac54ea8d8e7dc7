"""Training, fine-tuning, data and the command line. Depends on `scratchformer.modeling` and
`scratchformer.tokenization`; nothing here runs at import time."""

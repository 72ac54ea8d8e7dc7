"""Training, fine-tuning, data and the command line. Depends on `scratchformer.modeling` and
`scratchformer.tokenization`; nothing here runs at import time but the one setting below."""

import os

# `datasets.load_dataset("json", data_files=<local files>)` sends a HEAD request to S3 to count a
# download of the packaged builder: a network call for local data that nobody asked for (and a 3 s
# stall offline). Off unless the user set it; data.py also applies it if datasets was imported first.
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")

